-- W3C trace context (JSON text of {"traceparent": ..., "tracestate": ...}) of the send that
-- created the event, so the relay's backstop path publishes it with the same Kafka headers as
-- the fast path. NULL when tracing is off (almost always): a nullable column with no default is
-- a catalog-only change in PostgreSQL (no table rewrite, no long lock), and NULL costs no bytes
-- beyond the row's null bitmap. text rather than jsonb: it is only written and read back whole.
ALTER TABLE room_events ADD COLUMN trace text;
