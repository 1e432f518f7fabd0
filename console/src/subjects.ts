// Subjects in the officer's scope: the newest fix, and the status that colours the map.

import { h, setText } from "./dom";
import { age, clock } from "./format";
import type { Fix, Status, Subject, SubjectStatusView } from "./types";

const STATUS_TEXT: Record<Status, string> = {
  alert: "ALERT",
  acknowledged: "owned",
  stale: "no recent fix",
  ok: "ok",
};

// The server decides alert and acknowledged; staleness moves with the clock, so the page
// applies the same rule as daemon/console/status.py with the server's threshold.
export function displayStatus(subject: Subject, now: number, staleAfterSeconds: number): Status {
  if (subject.status === "alert" || subject.status === "acknowledged") return subject.status;
  const fix = subject.last_fix;
  if (fix === null || now - Date.parse(fix.ts) > staleAfterSeconds * 1000) return "stale";
  return "ok";
}

export interface SubjectHandlers {
  locate(subjectId: string): void;
  track(subjectId: string): void;
  changed(subject: Subject, status: Status): void;
}

export class SubjectTable {
  private readonly subjects = new Map<string, Subject>();
  private readonly rows = new Map<string, HTMLTableRowElement>();

  constructor(
    private readonly body: HTMLElement,
    private readonly staleAfterSeconds: number,
    private readonly on: SubjectHandlers,
  ) {}

  get ids(): string[] {
    return [...this.subjects.keys()];
  }

  get(subjectId: string): Subject | undefined {
    return this.subjects.get(subjectId);
  }

  replaceAll(subjects: Subject[]): void {
    const incoming = new Map(subjects.map((s) => [s.subject_id, s]));
    for (const id of [...this.subjects.keys()]) {
      if (!incoming.has(id)) {
        this.subjects.delete(id);
        this.rows.get(id)?.remove();
        this.rows.delete(id);
      }
    }
    for (const subject of subjects) {
      // A fix the stream already delivered may be newer than the snapshot's.
      const held = this.subjects.get(subject.subject_id)?.last_fix ?? null;
      if (held !== null && (subject.last_fix === null || Date.parse(held.ts) > Date.parse(subject.last_fix.ts))) {
        subject.last_fix = held;
      }
      this.subjects.set(subject.subject_id, subject);
      this.render(subject);
    }
  }

  position(fix: Fix): void {
    const subject = this.subjects.get(fix.subject_id);
    if (subject === undefined) return;
    if (subject.last_fix !== null && Date.parse(subject.last_fix.ts) >= Date.parse(fix.ts)) return;
    subject.last_fix = fix;
    this.render(subject);
  }

  status(view: SubjectStatusView): void {
    const subject = this.subjects.get(view.subject_id);
    if (subject === undefined) return;
    subject.status = view.status;
    subject.alerts = view.alerts;
    this.render(subject);
  }

  tick(): void {
    for (const subject of this.subjects.values()) this.render(subject);
  }

  private render(subject: Subject): void {
    const now = Date.now();
    const status = displayStatus(subject, now, this.staleAfterSeconds);
    let row = this.rows.get(subject.subject_id);
    if (row === undefined) {
      const id = subject.subject_id;
      const locate = h("button", { type: "button", class: "link" }, id);
      locate.addEventListener("click", () => this.on.locate(id));
      const track = h("button", { type: "button", class: "quiet track-button" }, "Track");
      track.addEventListener("click", () => this.on.track(id));
      row = h(
        "tr",
        { "data-subject-id": id },
        h("td", {}, locate),
        h("td", { class: "status" }, h("span", { class: "dot" }), h("span", { class: "status-text" })),
        h("td", { class: "fix" }),
        h("td", {}, track),
      );
      this.rows.set(id, row);
      // Sorted by id: a stable place for each subject in the list.
      const after = [...this.rows.keys()].sort().find((other) => other > id);
      this.body.insertBefore(row, after !== undefined ? (this.rows.get(after) ?? null) : null);
    }
    row.dataset.status = status;
    setText(row.querySelector(".status-text") as Element, STATUS_TEXT[status]);
    const fix = subject.last_fix;
    const cell = row.querySelector(".fix") as HTMLElement;
    setText(cell, fix === null ? "none" : `${age(fix.ts, now)} ago`);
    cell.title = fix === null ? "" : `${clock(fix.ts)} · ${fix.device_id} · ±${Math.round(fix.acc)} m`;
    this.on.changed(subject, status);
  }
}
