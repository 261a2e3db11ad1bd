"""One router per file; ``serving.app.create_app`` includes them all."""
