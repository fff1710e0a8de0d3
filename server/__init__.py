"""`specqd serve`: an OpenAI-compatible HTTP server over one engine that batches speculative decoding.

protocol (request bodies and errors) -> app (one handler per endpoint) -> engine (one thread owns the models
and steps every running request together) -> budget (how many draft tokens a batch can afford); metrics
(Prometheus) beside them. Scale-out (`--replicas`, the ray extra): ray_deploy (one engine per replica, pinned
to its cores, behind Ray Serve) -> ray_metrics (one /metrics for every replica), ray_proxy (the proxy's own
errors in OpenAI's shape).
"""
