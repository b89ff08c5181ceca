"""The tenant web console and the staff dashboard."""
