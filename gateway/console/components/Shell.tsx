"use client";

import Link from "next/link";
import { usePathname, useRouter } from "next/navigation";
import { createContext, useCallback, useContext, useEffect, useState, type ReactNode } from "react";
import { ApiError, getToken, request, setToken, type Me } from "@/lib/api";

interface Session {
  me: Me | null;
  isAdmin: boolean;
  logout: () => void;
  refresh: () => Promise<void>;
}

const SessionContext = createContext<Session>({
  me: null,
  isAdmin: false,
  logout: () => undefined,
  refresh: async () => undefined,
});

export function useSession(): Session {
  return useContext(SessionContext);
}

// Screens that work without an admin account: a key holder's own key, the playground, login.
const PUBLIC = ["/login/", "/my-key/", "/playground/"];

const NAV: { href: string; label: string; admin: boolean }[] = [
  { href: "/", label: "Overview", admin: true },
  { href: "/keys/", label: "Keys", admin: true },
  { href: "/models/", label: "Models", admin: true },
  { href: "/usage/", label: "Usage", admin: true },
  { href: "/playground/", label: "Playground", admin: false },
  { href: "/my-key/", label: "My key", admin: false },
  { href: "/users/", label: "Users", admin: true },
];

function normalise(path: string): string {
  const stripped = path.startsWith("/console") ? path.slice("/console".length) : path;
  if (stripped === "" || stripped === "/") return "/";
  return stripped.endsWith("/") ? stripped : `${stripped}/`;
}

export function Shell({ children }: { children: ReactNode }) {
  const pathname = normalise(usePathname() ?? "/");
  const router = useRouter();
  const [me, setMe] = useState<Me | null>(null);
  const [checked, setChecked] = useState(false);
  const isPublic = PUBLIC.includes(pathname);

  const refresh = useCallback(async () => {
    if (!getToken()) {
      setMe(null);
      setChecked(true);
      return;
    }
    try {
      setMe(await request<Me>("/admin/me"));
    } catch (err) {
      if (err instanceof ApiError && err.status === 401) setToken(null);
      setMe(null);
    } finally {
      setChecked(true);
    }
  }, []);

  useEffect(() => {
    void refresh();
  }, [refresh]);

  useEffect(() => {
    if (checked && !me && !isPublic) router.replace(`/login/?next=${encodeURIComponent(pathname)}`);
  }, [checked, me, isPublic, pathname, router]);

  const logout = useCallback(() => {
    setToken(null);
    setMe(null);
    router.replace("/login/");
  }, [router]);

  const session: Session = { me, isAdmin: me?.role === "admin", logout, refresh };
  const links = NAV.filter((item) => me || !item.admin);

  return (
    <SessionContext.Provider value={session}>
      <a
        href="#main"
        className="sr-only focus:not-sr-only focus:absolute focus:left-2 focus:top-2 focus:z-50 focus:rounded focus:bg-white focus:p-2"
      >
        Skip to content
      </a>
      <header className="border-b border-slate-200 bg-slate-900 text-white">
        <div className="mx-auto flex max-w-7xl flex-wrap items-center gap-x-6 gap-y-2 px-4 py-3">
          <Link href="/" className="text-lg font-semibold tracking-tight text-white">
            Tollgate
          </Link>
          <nav aria-label="Main" className="flex-1">
            <ul className="flex flex-wrap gap-1">
              {links.map((item) => {
                const current = pathname === item.href;
                return (
                  <li key={item.href}>
                    <Link
                      href={item.href}
                      aria-current={current ? "page" : undefined}
                      className={`rounded px-2 py-1 text-sm ${current ? "bg-white text-slate-900" : "text-slate-100 hover:bg-slate-700"}`}
                    >
                      {item.label}
                    </Link>
                  </li>
                );
              })}
            </ul>
          </nav>
          <div className="flex items-center gap-3 text-sm">
            {me ? (
              <>
                <span data-testid="whoami">
                  {me.email} <span className="rounded bg-slate-700 px-1.5 py-0.5 text-xs">{me.role}</span>
                </span>
                <button type="button" onClick={logout} className="rounded px-2 py-1 text-slate-100 underline hover:bg-slate-700">
                  Log out
                </button>
              </>
            ) : pathname !== "/login/" ? (
              <Link href="/login/" className="rounded px-2 py-1 text-slate-100 underline hover:bg-slate-700">
                Admin log in
              </Link>
            ) : null}
          </div>
        </div>
      </header>
      <main id="main" className="mx-auto max-w-7xl px-4 py-6">
        {isPublic || me ? children : checked ? null : <p role="status" className="text-sm text-slate-600">Loading…</p>}
      </main>
    </SessionContext.Provider>
  );
}
