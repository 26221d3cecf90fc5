// Runs in the page for tests/browser/test_web_e2e_vectors.py: every computation of e2e.js from
// the inputs of tests/e2e_vectors.json (passed as V); the test compares the outputs.
// An expression (a function), given to Playwright's page.evaluate.
async (V) => {
  const e = await import("/e2e.js");
  await e.ready();
  const H = e.fromHex, hex = e.hex, out = {};
  const dev = (name) => {
    const d = V.devices[name], v = Math.max(...Object.keys(d.encryption_key_hex).map(Number));
    return { deviceId: H(d.device_id_hex), signingKey: H(d.signing_key_hex), encryptionKey: H(d.encryption_key_hex[v]), keyVersion: v };
  };
  const seedOf = (idHex) => Object.values(V.devices).find((d) => d.device_id_hex === idHex).signing_seed_hex;
  const failure = async (f) => { try { await f(); return null; } catch (x) { return x.message; } };

  out.keys = Object.fromEntries(Object.entries(V.devices).map(([name, d]) => [name, {
    signing_key_hex: hex(e.signingPublic(H(d.signing_seed_hex))),
    encryption_key_hex: Object.fromEntries(Object.entries(d.encryption_secret_hex).map(([v, s]) => [v, hex(e.encryptionPublic(H(s)))])),
    device_id_b64: e.b64e(H(d.device_id_hex)),
  }]));

  const entries = V.device_list.entries.map((x) => ({ body: e.b64d(x.body_b64), signature: H(x.signature_hex) }));
  let state = null;
  out.chain = [];
  for (const entry of entries) {
    state = await e.checkNext(entry, V.users.alice, state);
    const dl = e.decodeDeviceList(entry.body);
    out.chain.push({ body_hex: hex(e.encodeDeviceList(dl)), signature_hex: hex(e.sign(H(seedOf(hex(dl.signerDevice))), entry.body)),
      hash_hex: hex(state.headHash), anchor_hex: hex(state.anchor), devices_hex: state.head.devices.map((d) => hex(d.deviceId)) });
  }
  const genesis = await e.checkNext(entries[0], V.users.alice, null);
  out.bad_list = await failure(() => e.checkNext({ body: H(V.bad_device_list.body_hex), signature: H(V.bad_device_list.signature_hex) }, V.users.alice, genesis));
  out.gap = await failure(() => e.verifyChain([entries[0], entries[2]], V.users.alice));
  out.other_user = await failure(() => e.verifyChain(entries.slice(0, 1), V.users.bob));

  const p = V.proposal;
  out.proposal_device = hex(e.checkProposal(H(p.body_hex), H(p.signature_hex), V.users.alice).deviceId);
  out.proposal_signature = hex(e.sign(H(V.devices.alice2.signing_seed_hex), H(p.body_hex)));

  const rk = V.room_key, bob = V.devices.bob1, alice = V.devices.alice1;
  const sealed = H(rk.sealed_hex);
  out.opened = hex(e.openRoomKey(sealed, H(bob.encryption_secret_hex["1"])));
  out.opened_by_another = e.openRoomKey(sealed, H(alice.encryption_secret_hex["1"]));
  const statement = e.encodeStatement({ roomId: String(rk.room_id), epoch: rk.epoch, recipientUser: bob.user_id.toString(),
    recipientDevice: H(bob.device_id_hex), recipientKeyVersion: 1, senderUser: alice.user_id.toString(), senderDevice: H(alice.device_id_hex), sealed });
  out.statement_hex = hex(statement);
  out.statement_signature = hex(e.sign(H(alice.signing_seed_hex), statement));
  out.statement_verifies = e.verify(H(alice.signing_key_hex), statement, H(rk.signature_hex));
  out.sealed_in_page = hex(e.sealRoomKey(H(rk.key_hex), H(bob.encryption_key_hex["1"])));

  const key = H(rk.key_hex);
  const ctxOf = (m, sender) => (m.kind === "create"
    ? e.createContext(String(m.room_id), m.epoch, String(m.author_id), sender, new TextDecoder().decode(H(m.ref_hex)))
    : e.editContext(String(m.room_id), m.epoch, String(m.author_id), sender, String(V.message_id_of_edit)));
  out.messages = V.messages.map((m) => {
    const ctx = ctxOf(m, H(m.sender_device_hex));
    const env = e.encryptMessage(ctx, e.encodePlaintext(m.text), key, H(alice.signing_seed_hex), H(m.nonce_hex));
    return { aad_hex: hex(e.messageAad(ctx)), plaintext_hex: hex(e.encodePlaintext(m.text)), ciphertext_hex: hex(env.ciphertext),
      signature_hex: hex(env.signature), wire_ciphertext: e.b64e(env.ciphertext), opened: e.openMessage(ctx, e.envelopeFromWire(m.wire), dev("alice1"), key) };
  });
  out.no_key = e.openMessage(ctxOf(V.messages[0], H(V.messages[0].sender_device_hex)), e.envelopeFromWire(V.messages[0].wire), dev("alice1"), null).status;
  const alice1 = dev("alice1");
  out.negative = V.negative_messages.map((m) => {
    const env = e.envelopeFromWire(m.wire);
    return e.openMessage(ctxOf(m, env.senderDevice), env, e.equal(env.senderDevice, alice1.deviceId) ? alice1 : null, key);
  });

  const S = V.safety, ak = H(alice.signing_key_hex), bk = H(bob.signing_key_hex);
  out.safety = {
    alice_digits: e.fingerprint(ak, String(V.users.alice)),
    bob_digits: e.fingerprint(bk, String(V.users.bob)),
    safety_number: e.safetyNumber(String(V.users.bob), bk, String(V.users.alice), ak),
    after_reset: e.safetyNumber(String(V.users.alice), H(V.devices.alice3.signing_key_hex), String(V.users.bob), bk),
    alice2_device_fingerprint: e.fingerprint(H(V.devices.alice2.signing_key_hex), String(V.users.alice)),
  };
  out.base64 = ["AA==", "AB", "A+8", "hGHSM-C578ja3iKD9UDtGg"].map((s) => { try { return hex(e.b64d(s)); } catch (x) { return null; } });
  return out;
}
