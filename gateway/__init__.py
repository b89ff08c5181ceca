"""The metering gateway: an async OpenAI-compatible proxy with no ORM on its request path."""
