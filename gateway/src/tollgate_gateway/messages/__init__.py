"""The Anthropic Messages API (`POST /v1/messages`) in front of Ollama's."""
