"""Berth's CPU inference engine (moved here from workers/engines by issue 13's work)."""
