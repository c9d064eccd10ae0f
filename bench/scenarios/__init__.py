"""One module per scenario; each defines NAME and run(ctx) -> list[Measurement]."""
