"""Registry of real models and their offline supply (pinned PyPI part packages → verified GGUF)."""
