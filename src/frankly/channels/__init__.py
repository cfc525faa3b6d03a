"""Where customers reach a desk: the API, the web chat widget, email and Bybit P2P order chats."""
