"""Wire types: every REST body and WebSocket frame is a msgspec type defined here."""
