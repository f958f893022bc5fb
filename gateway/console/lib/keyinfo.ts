import { request, type SelfKey } from "@/lib/api";

// The key holder's own key, authenticated with that key (not the admin session).
export function selfKey(apiKey: string): Promise<SelfKey> {
  return request<SelfKey>("/v1/key", { bearer: apiKey });
}
