"""The source side: the synthetic badge stream, the service that serves it, and the client that reads it.

``generators`` (the model, vectorized and replayable), ``encoding`` (JSON and Arrow bodies),
``stream_state`` (where the stream starts), ``faults`` (deliberate failures), ``main`` (the FastAPI
service), ``protocol`` (the HTTP contract's constants), ``validation`` and ``client`` (the resilient client).
"""
