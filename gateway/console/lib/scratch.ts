// The plaintext of a key created in this tab, kept in memory only (never in storage), so the
// playground can use "the key you just created" after a client-side navigation.
let lastCreatedKey: string | null = null;

export function rememberKey(key: string): void {
  lastCreatedKey = key;
}

export function recentKey(): string | null {
  return lastCreatedKey;
}
