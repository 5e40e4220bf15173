"""gpuprov_gateway: a DeepSeek/OpenAI-compatible API gateway."""

__version__ = "0.1.0"
