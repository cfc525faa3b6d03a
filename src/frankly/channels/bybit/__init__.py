"""Bybit P2P order chats: each pending order's chat is a conversation."""
