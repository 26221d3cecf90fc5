// The graphql-http audit suite (the GraphQL foundation's GraphQL-over-HTTP conformance checks).
//
// Every MUST passes. The audits that do not pass are exactly the ones where the suite (written to
// the 2024-2025 drafts) and the current draft of the spec disagree, and the edge follows the
// current draft (docs/protocol.md, "GraphQL over HTTP"):
// - a request error (document parse, validation, variable coercion) gets its 4xx status whatever
//   the Accept header; the suite still wants 200 for `Accept: application/json`;
// - validation and variable-coercion failures are 422 Unprocessable Content, malformed request
//   parameters 422 too; the suite wants 400 (or says 400 MAY be used).
// The audits query `__type`, so the edge under test runs with introspection enabled.
import assert from "node:assert/strict";
import { test } from "node:test";

import { auditServer } from "graphql-http";

import { GRAPHQL } from "./edge.mjs";

const DRAFT_422 = "the current draft: 422 for invalid parameters, validation and coercion failures";
const DRAFT_4XX = "the current draft: request errors keep their 4xx status for legacy Accept: application/json";
const EXPECTED_NOT_OK = new Map([
  ["423L", DRAFT_422], // MAY 400 on a missing {query}
  ["3E3A", DRAFT_422], // MAY 400 if parameters are invalid
  ["572B", DRAFT_4XX], // SHOULD 200 on document parsing failure (application/json)
  ["FDE2", DRAFT_4XX], // SHOULD 200 on document validation failure (application/json)
  ["7B9B", DRAFT_4XX], // SHOULD 200 on variable coercion failure (application/json)
  ["74FF", DRAFT_422], // SHOULD 400 on document validation failure
  ["86EE", DRAFT_422], // SHOULD 400 on variable coercion failure
]);

test("graphql-http server audits: every MUST passes, only the known draft differences remain", async () => {
  const results = await auditServer({ url: GRAPHQL });
  assert.ok(results.length > 50, `only ${results.length} audits ran`);
  const failedMust = results.filter((r) => r.status !== "ok" && r.name.startsWith("MUST"));
  assert.deepEqual(
    failedMust.map((r) => `${r.id} ${r.name}: ${r.reason}`),
    [],
  );
  const notOk = results.filter((r) => r.status !== "ok");
  const report = notOk.map((r) => `${r.status} ${r.id} ${r.name}: ${r.reason}`).join("\n");
  assert.deepEqual(
    notOk.map((r) => r.id).sort(),
    [...EXPECTED_NOT_OK.keys()].sort(),
    `audits not ok:\n${report}`,
  );
});
