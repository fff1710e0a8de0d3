"""`specqd serve`: an OpenAI-compatible HTTP server over one engine that batches speculative decoding.

protocol (request bodies and errors) -> app (one handler per endpoint) -> engine (one thread owns the models
and steps every running request together) -> budget (how many draft tokens a batch can afford); metrics
(Prometheus) beside them.
"""
