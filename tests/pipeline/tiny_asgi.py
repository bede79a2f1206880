"""The smallest ASGI app: 200 to every request (tests/pipeline/test_free_ports.py runs it under uvicorn)."""


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": b"ok"})
