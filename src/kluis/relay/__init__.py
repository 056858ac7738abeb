"""The sans-I/O client-server relay protocol: frames (one schema module) and connection states.

Shared by the server and the client; no sockets here. The transport is one WebSocket per
connection, each binary WebSocket message carrying exactly one frame (docs/PROTOCOL.md §9).
"""
