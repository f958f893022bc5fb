"use client";

import { useState, type FormEvent } from "react";
import { useSession } from "@/components/Shell";
import { Badge, Button, Card, Empty, ErrorBox, Field, Loading, PageHeader, Table, inputClass, td, th } from "@/components/ui";
import { request, when, type Me, type Role } from "@/lib/api";
import { useData } from "@/lib/useData";

export default function UsersPage() {
  const { me, isAdmin } = useSession();
  const users = useData(() => request<Me[]>("/admin/users"), []);
  const [email, setEmail] = useState("");
  const [password, setPassword] = useState("");
  const [role, setRole] = useState<Role>("viewer");
  const [error, setError] = useState<string | null>(null);
  const [creating, setCreating] = useState(false);

  async function act(work: () => Promise<unknown>) {
    setError(null);
    try {
      await work();
      await users.reload();
    } catch (err) {
      setError(err instanceof Error ? err.message : String(err));
    }
  }

  async function create(event: FormEvent) {
    event.preventDefault();
    await act(async () => {
      await request("/admin/users", { method: "POST", body: JSON.stringify({ email, password, role }) });
      setEmail("");
      setPassword("");
      setCreating(false);
    });
  }

  return (
    <>
      <PageHeader title="Users">
        {isAdmin && !creating ? <Button onClick={() => setCreating(true)}>Add user</Button> : null}
      </PageHeader>
      <p className="mb-4 text-sm text-slate-700">Admins can change everything; viewers see everything read-only.</p>
      <ErrorBox error={error ?? users.error} />
      {creating ? (
        <Card title="New user" className="mb-6">
          <form onSubmit={create} className="flex flex-wrap items-end gap-4">
            <Field label="Email" id="user-email">
              <input id="user-email" type="email" required value={email} onChange={(e) => setEmail(e.target.value)} className={inputClass} />
            </Field>
            <Field label="Password" id="user-password" hint="At least 12 characters">
              <input id="user-password" type="password" minLength={12} required autoComplete="new-password" value={password} onChange={(e) => setPassword(e.target.value)} className={inputClass} />
            </Field>
            <Field label="Role" id="user-role">
              <select id="user-role" value={role} onChange={(e) => setRole(e.target.value as Role)} className={inputClass}>
                <option value="viewer">viewer</option>
                <option value="admin">admin</option>
              </select>
            </Field>
            <Button type="submit">Create user</Button>
            <Button variant="secondary" onClick={() => setCreating(false)}>Cancel</Button>
          </form>
        </Card>
      ) : null}
      {users.loading && !users.data ? <Loading /> : null}
      {users.data && users.data.length === 0 ? <Empty>No users.</Empty> : null}
      {users.data && users.data.length > 0 ? (
        <Card>
          <Table label="Users">
            <thead>
              <tr>
                <th scope="col" className={th}>Email</th>
                <th scope="col" className={th}>Role</th>
                <th scope="col" className={th}>State</th>
                <th scope="col" className={th}>Created</th>
                {isAdmin ? <th scope="col" className={th}><span className="sr-only">Actions</span></th> : null}
              </tr>
            </thead>
            <tbody>
              {users.data.map((u) => (
                <tr key={u.id}>
                  <td className={td}>{u.email}{u.id === me?.id ? " (you)" : ""}</td>
                  <td className={td}><Badge tone={u.role === "admin" ? "blue" : "slate"}>{u.role}</Badge></td>
                  <td className={td}>{u.disabled ? <Badge tone="amber">disabled</Badge> : <Badge tone="green">active</Badge>}</td>
                  <td className={`${td} text-xs`}>{when(u.created_at)}</td>
                  {isAdmin ? (
                    <td className={`${td} whitespace-nowrap`}>
                      {u.id === me?.id ? null : (
                        <span className="flex gap-1">
                          <Button variant="secondary" onClick={() => void act(() => request(`/admin/users/${u.id}`, { method: "PATCH", body: JSON.stringify({ role: u.role === "admin" ? "viewer" : "admin" }) }))}>
                            Make {u.role === "admin" ? "viewer" : "admin"}
                          </Button>
                          <Button variant="secondary" onClick={() => void act(() => request(`/admin/users/${u.id}`, { method: "PATCH", body: JSON.stringify({ disabled: !u.disabled }) }))}>
                            {u.disabled ? "Enable" : "Disable"}
                          </Button>
                        </span>
                      )}
                    </td>
                  ) : null}
                </tr>
              ))}
            </tbody>
          </Table>
        </Card>
      ) : null}
    </>
  );
}
