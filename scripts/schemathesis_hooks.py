"""schemathesis hooks for scripts/test.sh.

- The uploads' JSON Lines bodies are sent as text (their schema is a string), as a client sends a .jsonl file.
- An upload's body is the raw file: every byte string is a string, so a "body that is not a string" (null, a
  number) does not exist on the wire; it would arrive as the text "null" or "123", a valid document. Such
  generated bodies are dropped for that operation (its other negative cases, in its query, stay).
"""
import schemathesis

schemathesis.serializer.alias("application/jsonl", "text/plain")


@schemathesis.hook
def filter_body(ctx, body):
    op = ctx.operation
    if op is not None and op.path == "/api/uploads" and op.method.upper() == "POST":
        return isinstance(body, str)
    return True
