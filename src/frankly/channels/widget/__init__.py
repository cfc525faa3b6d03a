"""The web chat widget: a customer chat page per desk, an embeddable script, live replies."""
