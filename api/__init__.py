"""The generator service: the synthetic badge stream and the FastAPI app that serves it.

``generators`` (the model, vectorized and replayable), ``encoding`` (JSON and Arrow bodies),
``stream_state`` (where the stream starts), ``faults`` (deliberate failures), ``main`` (the FastAPI
service, ``uvicorn api.main:app``). The HTTP contract's constants live in :mod:`utils.protocol`, shared
with the client in :mod:`source`.
"""
