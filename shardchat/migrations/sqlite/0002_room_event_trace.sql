-- W3C trace context (JSON text of {"traceparent": ..., "tracestate": ...}) of the send that
-- created the event, so the relay's backstop path publishes it with the same Kafka headers as
-- the fast path. NULL when tracing is off. ADD COLUMN with no default only edits the schema:
-- existing rows read it as NULL without being rewritten.
ALTER TABLE room_events ADD COLUMN trace text;
