// The gateway's own APIs, same origin. Only the admin session token is stored (sessionStorage,
// so it ends with the tab); API keys pasted into the console stay in memory.

const TOKEN_KEY = "tollgate.session";

export function getToken(): string | null {
  if (typeof window === "undefined") return null;
  return window.sessionStorage.getItem(TOKEN_KEY);
}

export function setToken(token: string | null): void {
  if (token === null) window.sessionStorage.removeItem(TOKEN_KEY);
  else window.sessionStorage.setItem(TOKEN_KEY, token);
}

export class ApiError extends Error {
  constructor(
    public status: number,
    message: string,
  ) {
    super(message);
  }
}

async function errorOf(response: Response): Promise<ApiError> {
  let message = `${response.status} ${response.statusText}`;
  try {
    const body: unknown = await response.json();
    if (body && typeof body === "object" && "error" in body) {
      const err = (body as { error: { message?: string } }).error;
      if (err?.message) message = err.message;
    } else if (body && typeof body === "object" && "detail" in body) {
      const detail = (body as { detail: unknown }).detail;
      message = typeof detail === "string" ? detail : JSON.stringify(detail);
    }
  } catch {
    // not JSON: keep the status line
  }
  return new ApiError(response.status, message);
}

export async function request<T>(
  path: string,
  init: RequestInit & { bearer?: string | null } = {},
): Promise<T> {
  const { bearer, ...rest } = init;
  const headers = new Headers(rest.headers);
  const token = bearer === undefined ? getToken() : bearer;
  if (token) headers.set("Authorization", `Bearer ${token}`);
  if (rest.body && !headers.has("Content-Type")) headers.set("Content-Type", "application/json");
  const response = await fetch(path, { ...rest, headers, cache: "no-store" });
  if (!response.ok) throw await errorOf(response);
  if (response.status === 204) return undefined as T;
  return (await response.json()) as T;
}

export async function download(path: string, filename: string): Promise<void> {
  const headers = new Headers();
  const token = getToken();
  if (token) headers.set("Authorization", `Bearer ${token}`);
  const response = await fetch(path, { headers, cache: "no-store" });
  if (!response.ok) throw await errorOf(response);
  const url = URL.createObjectURL(await response.blob());
  const link = document.createElement("a");
  link.href = url;
  link.download = filename;
  document.body.appendChild(link);
  link.click();
  link.remove();
  URL.revokeObjectURL(url);
}

export type Role = "admin" | "viewer";

export interface Me {
  id: string;
  email: string;
  role: Role;
  disabled: boolean;
  created_at: string;
}

export interface Key {
  id: string;
  name: string;
  key_prefix: string;
  owner: string | null;
  app: string | null;
  allowed_models: string[];
  rate_limit_rpm: number | null;
  tpm_limit: number | null;
  concurrency_limit: number | null;
  monthly_budget: string | null;
  expires_at: string | null;
  disabled: boolean;
  revoked_at: string | null;
  managed_by: string | null;
  created_at: string;
  updated_at: string;
}

export interface KeyCreated extends Key {
  key: string;
}

export interface KeyActivity {
  id: string;
  month_spend: string;
  last_used: string | null;
}

export interface Model {
  id: string;
  alias: string;
  backend_tag: string;
  backend_url: string | null;
  enabled: boolean;
  input_price_per_mtok: string;
  output_price_per_mtok: string;
  managed_by: string | null;
  created_at: string;
}

export interface Totals {
  requests: number;
  errors: number;
  prompt_tokens: number;
  completion_tokens: number;
  cost: string;
  error_rate: number;
}

export interface TopRow {
  group: string | null;
  label: string;
  requests: number;
  tokens: number;
  cost: string;
}

export interface OverviewWindow {
  window: string;
  since: string;
  until: string;
  totals: Totals;
  top_keys: TopRow[];
  top_apps: TopRow[];
  top_models: TopRow[];
}

export interface Overview {
  windows: OverviewWindow[];
  keys_active: number;
  models_enabled: number;
}

export type GroupBy = "key" | "app" | "model" | "endpoint";

export interface ExplorerRow {
  group: string | null;
  label: string;
  requests: number;
  errors: number;
  prompt_tokens: number;
  completion_tokens: number;
  cost: string;
  latency_p50_ms: number | null;
  latency_p95_ms: number | null;
  ttft_p50_ms: number | null;
  ttft_p95_ms: number | null;
}

export interface SeriesPoint {
  bucket: string;
  requests: number;
  errors: number;
  tokens: number;
  cost: string;
}

export interface Explorer {
  since: string;
  until: string;
  group_by: GroupBy;
  bucket: "hour" | "day";
  rows: ExplorerRow[];
  series: SeriesPoint[];
}

export interface SelfKey {
  id: string;
  name: string;
  key_prefix: string;
  owner: string | null;
  app: string | null;
  allowed_models: string;
  models: string[];
  prices: { alias: string; input_price_per_mtok: string; output_price_per_mtok: string }[];
  rate_limit_rpm: number | null;
  tpm_limit: number | null;
  concurrency_limit: number | null;
  monthly_budget: string | null;
  expires_at: string | null;
  month: string;
  spent: string;
  remaining: string | null;
  usage_30d: Totals;
}

export function money(value: string | number | null | undefined): string {
  if (value === null || value === undefined) return "—";
  const n = typeof value === "number" ? value : Number(value);
  if (!Number.isFinite(n)) return "—";
  // Whole cents as usual; anything finer (token prices are tiny) to six decimals, trimmed,
  // so that $9.99984 left of a $10 budget does not read as $10.00.
  if (Math.abs(n * 100 - Math.round(n * 100)) < 1e-9) return `$${n.toFixed(2)}`;
  return `$${n.toFixed(6).replace(/0+$/, "")}`;
}

export function count(value: number | null | undefined): string {
  if (value === null || value === undefined) return "—";
  return value.toLocaleString("en-US");
}

export function ms(value: number | null | undefined): string {
  if (value === null || value === undefined) return "—";
  return value >= 1000 ? `${(value / 1000).toFixed(2)} s` : `${Math.round(value)} ms`;
}

export function when(value: string | null | undefined): string {
  if (!value) return "—";
  const d = new Date(value);
  return d.toLocaleString("en-GB", { dateStyle: "medium", timeStyle: "short" });
}
