"""The relay service: accounts, prekey directory, mailboxes, delivery over WebSocket (DESIGN.md)."""
