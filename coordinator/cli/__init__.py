"""The `bridgestat` command: its parser, the generated kind options and query output."""
