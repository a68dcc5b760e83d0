"""Model-family adapters: checkpoint loading, sampling defaults, tiny checkpoints."""
