"""schemathesis hooks for scripts/test.sh: the uploads' JSON Lines bodies are sent as text (their schema is a
string), as a client would send a .jsonl file."""
import schemathesis

schemathesis.serializer.alias("application/jsonl", "text/plain")
