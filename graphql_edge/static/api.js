// GraphQL over HTTP with token storage and refresh-token rotation before access expiry.
const STORE = "shardchat.session";
const AUTH = "accessToken refreshToken expiresIn user { id username status }";

// code: extensions.code (UNAUTHENTICATED, NOT_FOUND, RATE_LIMITED ...); reason: the finer
// extensions.reason some errors add (TWO_FACTOR_REQUIRED, TWO_FACTOR_INVALID; ROTATION_DUE... in
// encrypted rooms).
export class ApiError extends Error {
  constructor(code, message, reason = null) { super(message); this.code = code; this.reason = reason; }
}

export class Api {
  constructor() {
    this.session = JSON.parse(localStorage.getItem(STORE) || "null");
    this.refreshing = null;
    this.timer = null;
    if (this.session) this.scheduleRefresh();
    // another tab rotated the tokens: use them (a logout there ends our gateway session anyway)
    addEventListener("storage", (e) => {
      if (e.key !== STORE || !e.newValue || !this.session) return;
      this.session = JSON.parse(e.newValue); this.scheduleRefresh();
    });
  }

  async gql(query, variables = {}, { auth = true } = {}) {
    const headers = { "Content-Type": "application/json" };
    if (auth && this.session) headers.Authorization = `Bearer ${await this.token()}`;
    const res = await fetch("/graphql", { method: "POST", headers, body: JSON.stringify({ query, variables }) });
    const body = await res.json().catch(() => ({}));
    if (body.errors?.length) {
      const e = body.errors[0];
      throw new ApiError(e.extensions?.code || "INTERNAL", e.message, e.extensions?.reason || null);
    }
    if (!res.ok) throw new ApiError("INTERNAL", `HTTP ${res.status}`);
    return body.data;
  }

  async register(u, p) {
    const q = `mutation($u: String!, $p: String!) { register(username: $u, password: $p) { ${AUTH} } }`;
    return this.keep((await this.gql(q, { u, p }, { auth: false })).register);
  }
  // totp: the two-factor code (or a recovery code) once the server answered TWO_FACTOR_REQUIRED.
  async login(u, p, totp = null) {
    const q = `mutation($u: String!, $p: String!, $t: String) { login(username: $u, password: $p, totpCode: $t) { ${AUTH} } }`;
    return this.keep((await this.gql(q, { u, p, t: totp || null }, { auth: false })).login);
  }

  async logout() {
    if (this.session) await this.gql("mutation($r: String!) { logout(refreshToken: $r) }", { r: this.session.refreshToken }, { auth: false }).catch(() => {});
    this.clear();
  }

  clear() { this.session = null; localStorage.removeItem(STORE); clearTimeout(this.timer); }

  // The access token, rotated first if it expires within a minute (one rotation at a time:
  // a reused refresh token revokes the whole family, so concurrent refreshes must not happen).
  async token() {
    if (Date.now() > this.session.expiresAt - 60_000) await this.refresh();
    return this.session.accessToken;
  }

  // Tabs of one origin share the session: one rotation at a time across them (a Web Lock where
  // the page is a secure context), and a tab that finds the stored session already rotated by
  // another takes it instead of reusing the old refresh token.
  refresh() {
    const rotate = async () => {
      const stored = JSON.parse(localStorage.getItem(STORE) || "null");
      if (stored && stored.refreshToken !== this.session.refreshToken && stored.expiresAt - Date.now() > 60_000) {
        this.session = stored; this.scheduleRefresh();
        return this.session;
      }
      const d = await this.gql(`mutation($r: String!) { refreshToken(refreshToken: $r) { ${AUTH} } }`,
        { r: this.session.refreshToken }, { auth: false });
      return this.keep(d.refreshToken);
    };
    this.refreshing ||= (navigator.locks ? navigator.locks.request(STORE, rotate) : rotate())
      .catch((e) => { if (e.code === "UNAUTHENTICATED") this.clear(); throw e; })
      .finally(() => { this.refreshing = null; });
    return this.refreshing;
  }

  keep(p) {
    this.session = { accessToken: p.accessToken, refreshToken: p.refreshToken, expiresAt: Date.now() + p.expiresIn * 1000, user: p.user };
    localStorage.setItem(STORE, JSON.stringify(this.session));
    this.scheduleRefresh();
    return this.session;
  }

  scheduleRefresh() {
    clearTimeout(this.timer);
    const wait = Math.max(5_000, this.session.expiresAt - Date.now() - 90_000);
    this.timer = setTimeout(() => this.refresh().catch(() => {}), wait + Math.random() * 20_000);
  }
}
