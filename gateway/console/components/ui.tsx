"use client";

import type { ButtonHTMLAttributes, ReactNode } from "react";

export function PageHeader({ title, children }: { title: string; children?: ReactNode }) {
  return (
    <div className="mb-6 flex flex-wrap items-end justify-between gap-3">
      <h1 className="text-2xl font-semibold tracking-tight">{title}</h1>
      {children ? <div className="flex flex-wrap items-center gap-2">{children}</div> : null}
    </div>
  );
}

export function Card({
  title,
  children,
  className = "",
}: {
  title?: string;
  children: ReactNode;
  className?: string;
}) {
  return (
    <section
      className={`rounded-lg border border-slate-200 bg-white p-4 shadow-sm ${className}`}
      aria-label={title}
    >
      {title ? <h2 className="mb-3 text-base font-semibold text-slate-800">{title}</h2> : null}
      {children}
    </section>
  );
}

export function Stat({ label, value, hint }: { label: string; value: string; hint?: string }) {
  return (
    <div className="rounded-lg border border-slate-200 bg-white p-4 shadow-sm">
      <p className="text-sm text-slate-600">{label}</p>
      <p
        className="mt-1 text-2xl font-semibold tabular-nums"
        data-testid={`stat-${label.toLowerCase().replace(/[^a-z0-9]+/g, "-")}`}
      >
        {value}
      </p>
      {hint ? <p className="mt-1 text-xs text-slate-600">{hint}</p> : null}
    </div>
  );
}

type Variant = "primary" | "secondary" | "danger";

const VARIANTS: Record<Variant, string> = {
  primary: "bg-blue-700 text-white hover:bg-blue-800 disabled:bg-blue-300",
  secondary:
    "border border-slate-300 bg-white text-slate-800 hover:bg-slate-100 disabled:text-slate-400",
  danger: "bg-red-700 text-white hover:bg-red-800 disabled:bg-red-300",
};

export function Button({
  variant = "primary",
  className = "",
  ...props
}: ButtonHTMLAttributes<HTMLButtonElement> & { variant?: Variant }) {
  return (
    <button
      type="button"
      {...props}
      className={`inline-flex items-center justify-center rounded-md px-3 py-1.5 text-sm font-medium ${VARIANTS[variant]} ${className}`}
    />
  );
}

export function ErrorBox({ error }: { error: string | null }) {
  if (!error) return null;
  return (
    <div role="alert" className="mb-4 rounded-md border border-red-300 bg-red-50 p-3 text-sm text-red-800">
      {error}
    </div>
  );
}

export function Empty({ children }: { children: ReactNode }) {
  return (
    <p className="rounded-md border border-dashed border-slate-300 p-6 text-center text-sm text-slate-600">
      {children}
    </p>
  );
}

export function Loading() {
  return (
    <p className="text-sm text-slate-600" role="status">
      Loading…
    </p>
  );
}

export function Field({
  label,
  id,
  hint,
  children,
}: {
  label: string;
  id: string;
  hint?: string;
  children: ReactNode;
}) {
  return (
    <div className="flex flex-col gap-1">
      <label htmlFor={id} className="text-sm font-medium text-slate-800">
        {label}
      </label>
      {children}
      {hint ? <p className="text-xs text-slate-600">{hint}</p> : null}
    </div>
  );
}

export const inputClass =
  "rounded-md border border-slate-400 bg-white px-2 py-1.5 text-sm text-slate-900 placeholder:text-slate-500";

export function Badge({ tone = "slate", children }: { tone?: "slate" | "green" | "red" | "amber" | "blue"; children: ReactNode }) {
  const tones = {
    slate: "bg-slate-100 text-slate-800",
    green: "bg-green-100 text-green-900",
    red: "bg-red-100 text-red-900",
    amber: "bg-amber-100 text-amber-900",
    blue: "bg-blue-100 text-blue-900",
  };
  return <span className={`inline-block rounded px-1.5 py-0.5 text-xs font-medium ${tones[tone]}`}>{children}</span>;
}

export function BudgetBar({ spent, budget }: { spent: number; budget: number | null }) {
  if (budget === null) return <span className="text-xs text-slate-600">no budget</span>;
  const ratio = budget > 0 ? Math.min(1, spent / budget) : 1;
  const pct = Math.round(ratio * 100);
  const tone = ratio >= 0.9 ? "bg-red-600" : ratio >= 0.7 ? "bg-amber-500" : "bg-green-600";
  return (
    <svg
      role="img"
      aria-label={`${pct}% of the monthly budget spent`}
      className="h-2 w-28 overflow-hidden rounded bg-slate-200"
      viewBox="0 0 100 8"
      preserveAspectRatio="none"
    >
      <rect x="0" y="0" width="100" height="8" className="fill-slate-200" />
      <rect x="0" y="0" width={pct} height="8" className={tone.replace("bg-", "fill-")} />
    </svg>
  );
}

export function Table({ children, label }: { children: ReactNode; label: string }) {
  return (
    // Focusable, so keyboard users can scroll a table wider than its card.
    <div className="overflow-x-auto" tabIndex={0} role="region" aria-label={`${label} (scrollable)`}>
      <table className="w-full border-collapse text-left text-sm" aria-label={label}>
        {children}
      </table>
    </div>
  );
}

export const th = "border-b border-slate-200 px-2 py-2 text-xs font-semibold uppercase tracking-wide text-slate-600";
export const td = "border-b border-slate-100 px-2 py-2 align-top";
