"""Invoice PDFs, drawn with ReportLab's platypus (tables and paragraphs, A4, embedded fonts only)."""

from __future__ import annotations

import io

from django.conf import settings
from reportlab.lib import colors
from reportlab.lib.pagesizes import A4
from reportlab.lib.styles import ParagraphStyle, getSampleStyleSheet
from reportlab.lib.units import mm
from reportlab.platypus import Paragraph, SimpleDocTemplate, Spacer, Table, TableStyle

from billing.models import Invoice
from billing.money import format_money

INK = colors.HexColor("#1f2937")
MUTED = colors.HexColor("#6b7280")
RULE = colors.HexColor("#d1d5db")


def _styles():
    base = getSampleStyleSheet()
    return {
        "title": ParagraphStyle("title", parent=base["Title"], alignment=0, textColor=INK, fontSize=20),
        "body": ParagraphStyle("body", parent=base["BodyText"], textColor=INK, fontSize=9.5, leading=13),
        "muted": ParagraphStyle("muted", parent=base["BodyText"], textColor=MUTED, fontSize=8.5, leading=11),
        "cell": ParagraphStyle("cell", parent=base["BodyText"], textColor=INK, fontSize=9, leading=11),
    }


def _esc(text: object) -> str:
    return str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def render(invoice: Invoice) -> bytes:
    """The invoice as PDF bytes."""
    styles = _styles()
    cur = invoice.currency
    buffer = io.BytesIO()
    doc = SimpleDocTemplate(
        buffer,
        pagesize=A4,
        leftMargin=18 * mm,
        rightMargin=18 * mm,
        topMargin=18 * mm,
        bottomMargin=18 * mm,
        title=f"Invoice {invoice.number}",
        author="Berth",
        subject=f"{invoice.tenant.name} — {invoice.period_start:%Y-%m-%d} to {invoice.period_end:%Y-%m-%d}",
    )
    last_day = invoice.period_end.date().fromordinal(invoice.period_end.date().toordinal() - 1)
    account = getattr(invoice.tenant, "billing_account", None)
    bill_to = [_esc(invoice.tenant.name)]
    if account is not None and account.billing_email:
        bill_to.append(_esc(account.billing_email))
    facts = [
        ["Invoice number", invoice.number],
        ["Status", invoice.get_status_display()],
        ["Billing period", f"{invoice.period_start:%d %b %Y} – {last_day:%d %b %Y} (UTC)"],
        ["Issued", f"{invoice.finalized_at or invoice.created_at:%d %b %Y}"],
    ]
    if invoice.due_at and invoice.status == "open":
        facts.append(["Due", f"{invoice.due_at:%d %b %Y}"])
    if invoice.paid_at:
        facts.append(["Paid", f"{invoice.paid_at:%d %b %Y}"])
    story = [
        Paragraph("Invoice", styles["title"]),
        Paragraph(f"{_esc(settings.BILLING_ISSUER)}", styles["muted"]),
        Spacer(1, 6 * mm),
        Table(
            [
                [
                    Paragraph("<b>Bill to</b><br/>" + "<br/>".join(bill_to), styles["body"]),
                    _facts(facts, styles),
                ],
            ],
            colWidths=[80 * mm, 94 * mm],
            style=[("VALIGN", (0, 0), (-1, -1), "TOP"), ("LEFTPADDING", (0, 0), (0, 0), 0)],
        ),
        Spacer(1, 8 * mm),
    ]
    header = ["Description", "Tokens", f"Price per 1M ({cur})", f"Amount ({cur})"]
    rows = [header]
    for line in invoice.lines.select_related("price__adapter__base_model"):
        text = _esc(line.description)
        if line.price is None:
            text += " <font color='#6b7280'>(no price set)</font>"
        if line.late_requests:
            text += f" <font color='#6b7280'>(incl. {line.late_requests} late request(s) from earlier periods)</font>"
        rows.append(
            [
                Paragraph(text, styles["cell"]),
                f"{line.tokens:,}",
                f"{line.unit_price_per_million.normalize():f}",
                format_money(line.amount, cur),
            ]
        )
    if len(rows) == 1:
        rows.append([Paragraph("No usage in this period.", styles["cell"]), "", "", ""])
    rows += [
        ["", "", "Subtotal", format_money(invoice.subtotal, cur)],
        ["", "", "Total", format_money(invoice.total, cur)],
    ]
    table = Table(rows, colWidths=[82 * mm, 28 * mm, 34 * mm, 30 * mm], repeatRows=1)
    table.setStyle(
        TableStyle(
            [
                ("FONTNAME", (0, 0), (-1, 0), "Helvetica-Bold"),
                ("FONTSIZE", (0, 0), (-1, -1), 9),
                ("TEXTCOLOR", (0, 0), (-1, -1), INK),
                ("LINEBELOW", (0, 0), (-1, 0), 0.8, INK),
                ("LINEBELOW", (0, 1), (-1, -3), 0.3, RULE),
                ("ALIGN", (1, 0), (-1, -1), "RIGHT"),
                ("VALIGN", (0, 0), (-1, -1), "MIDDLE"),
                ("FONTNAME", (2, -1), (-1, -1), "Helvetica-Bold"),
                ("LINEABOVE", (2, -1), (-1, -1), 0.8, INK),
                ("TOPPADDING", (0, 0), (-1, -1), 4),
                ("BOTTOMPADDING", (0, 0), (-1, -1), 4),
            ]
        )
    )
    story += [table, Spacer(1, 8 * mm)]
    if invoice.stripe_hosted_url:
        pay = f"Pay online: <link href='{_esc(invoice.stripe_hosted_url)}'>{_esc(invoice.stripe_hosted_url)}</link>"
    elif invoice.status == "open":
        pay = "Online payment is not set up for this installation; your provider will tell you how to pay."
    else:
        pay = ""
    if pay:
        story.append(Paragraph(pay, styles["body"]))
    story.append(Spacer(1, 4 * mm))
    story.append(
        Paragraph(
            "Amounts are tokens × the price per million tokens in effect when each request ran, rounded "
            "half-up to the cent once per line. Lines marked flex, priority or batch are billed at that "
            "service tier's percent of the model's price.",
            styles["muted"],
        )
    )
    doc.build(story)
    return buffer.getvalue()


def _facts(facts, styles) -> Table:
    table = Table(
        [[Paragraph(f"<b>{k}</b>", styles["body"]), Paragraph(_esc(v), styles["body"])] for k, v in facts]
    )
    table.setStyle(TableStyle([("LEFTPADDING", (0, 0), (-1, -1), 0), ("VALIGN", (0, 0), (-1, -1), "TOP")]))
    return table


def filename(invoice: Invoice) -> str:
    return f"berth-invoice-{invoice.number}.pdf"
