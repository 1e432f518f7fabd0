// The open-alerts list: one card per unresolved alert, most urgent first, with the
// officer's two actions. Cards are kept (not re-rendered) across updates, so a resolve
// form half filled in survives the live updates that arrive meanwhile.

import { h, setText } from "./dom";
import { age, clock, dispositionLabel, ruleLabel } from "./format";
import type { Alert, AlertEvent } from "./types";

export interface AlertActions {
  acknowledge(alertId: string): Promise<void>;
  resolve(alertId: string, disposition: string, note: string): Promise<void>;
  locate(subjectId: string): void;
}

const TIER_RANK: Record<string, number> = { critical: 0, high: 1, low: 2 };

export function alertOrder(a: Alert, b: Alert): number {
  // Nobody owns it yet before owned ones; then tier; then the oldest first (a queue).
  const owned = Number(a.state !== "open") - Number(b.state !== "open");
  if (owned !== 0) return owned;
  const tier = (TIER_RANK[a.tier] ?? 9) - (TIER_RANK[b.tier] ?? 9);
  if (tier !== 0) return tier;
  return Date.parse(a.opened_at) - Date.parse(b.opened_at) || a.alert_id.localeCompare(b.alert_id);
}

class AlertCard {
  readonly el: HTMLElement;
  alert: Alert;
  lastNotice = "";
  private readonly tier = h("span", { class: "tier" });
  private readonly rule = h("span", { class: "rule" });
  private readonly subject = h("button", { type: "button", class: "link subject" });
  private readonly age = h("span", { class: "age" });
  private readonly reason = h("p", { class: "reason" });
  private readonly state = h("p", { class: "state" });
  private readonly ackButton = h("button", { type: "button", class: "ack" }, "Acknowledge");
  private readonly resolveOpen = h("button", { type: "button", class: "resolve-open" }, "Resolve…");
  private readonly form = h("form", { class: "resolve-form", hidden: true });
  private readonly disposition = h("select", { class: "disposition", required: true });
  private readonly note = h("input", {
    class: "note",
    type: "text",
    maxlength: "2000",
    placeholder: "Note (what you found, what you did)",
  });
  private readonly error = h("p", { class: "error", role: "alert" });

  constructor(
    alert: Alert,
    dispositions: string[],
    private readonly actions: AlertActions,
  ) {
    this.alert = alert;
    this.disposition.append(h("option", { value: "" }, "Disposition…"));
    for (const d of dispositions) this.disposition.append(h("option", { value: d }, dispositionLabel(d)));
    this.form.append(
      this.disposition,
      this.note,
      h("button", { type: "submit", class: "resolve-confirm" }, "Resolve"),
      h("button", { type: "button", class: "quiet cancel" }, "Cancel"),
    );
    this.el = h(
      "article",
      { class: "alert-card", "data-alert-id": alert.alert_id },
      h("div", { class: "head" }, this.tier, this.rule, this.subject, h("span", { class: "spacer" }), this.age),
      this.reason,
      this.state,
      h("div", { class: "actions" }, this.ackButton, this.resolveOpen),
      this.form,
      this.error,
    );
    this.subject.addEventListener("click", () => this.actions.locate(this.alert.subject_id));
    this.ackButton.addEventListener("click", () =>
      this.busy(() => this.actions.acknowledge(this.alert.alert_id)),
    );
    this.resolveOpen.addEventListener("click", () => {
      this.form.hidden = !this.form.hidden;
      if (!this.form.hidden) this.disposition.focus();
    });
    this.form.querySelector(".cancel")?.addEventListener("click", () => {
      this.form.hidden = true;
    });
    this.form.addEventListener("submit", (event) => {
      event.preventDefault();
      if (this.disposition.value === "") {
        setText(this.error, "Choose a disposition.");
        return;
      }
      void this.busy(() =>
        this.actions.resolve(this.alert.alert_id, this.disposition.value, this.note.value.trim()),
      );
    });
    this.update(alert, Date.now());
  }

  update(alert: Alert, now: number): void {
    this.alert = alert;
    const el = this.el;
    el.dataset.state = alert.state;
    el.dataset.tier = alert.tier;
    el.dataset.rule = alert.rule;
    el.dataset.subjectId = alert.subject_id;
    setText(this.tier, alert.tier.toUpperCase());
    this.tier.className = `tier tier-${alert.tier}`;
    setText(this.rule, ruleLabel(alert.rule) + (alert.zone_id ? ` · ${alert.zone_id}` : ""));
    setText(this.subject, alert.subject_id);
    setText(this.reason, alert.reason);
    this.ackButton.hidden = alert.state !== "open";
    this.tick(now);
  }

  tick(now: number): void {
    const a = this.alert;
    setText(this.age, age(a.opened_at, now));
    this.age.title = `opened ${clock(a.opened_at)}`;
    const parts: string[] = [];
    if (a.state === "open") {
      parts.push(`OPEN · nobody owns it · officer ${a.officer_id ?? "—"}`);
    } else if (a.acknowledged_at !== null) {
      parts.push(`ACKNOWLEDGED by ${a.acknowledged_by ?? "?"} ${age(a.acknowledged_at, now)} ago`);
    }
    if (a.count > 1) parts.push(`seen ${a.count}×`);
    if (!a.condition_active && a.cleared_at !== null) {
      parts.push(`condition ended ${clock(a.cleared_at)}, still needs a person`);
    }
    if (this.lastNotice) parts.push(this.lastNotice);
    setText(this.state, parts.join(" · "));
  }

  private async busy(action: () => Promise<void>): Promise<void> {
    const buttons = this.el.querySelectorAll("button");
    buttons.forEach((b) => (b.disabled = true));
    setText(this.error, "");
    try {
      await action();
    } catch (error) {
      setText(this.error, error instanceof Error ? error.message : String(error));
    } finally {
      buttons.forEach((b) => (b.disabled = false));
    }
  }
}

export class AlertList {
  private readonly cards = new Map<string, AlertCard>();

  constructor(
    private readonly container: HTMLElement,
    private readonly empty: HTMLElement,
    private readonly countBadge: HTMLElement,
    private readonly dispositions: string[],
    private readonly actions: AlertActions,
  ) {}

  get alerts(): Alert[] {
    return [...this.cards.values()].map((c) => c.alert);
  }

  // The whole unresolved list (after a (re)connection).
  replaceAll(alerts: Alert[]): void {
    const keep = new Set(alerts.map((a) => a.alert_id));
    for (const id of [...this.cards.keys()]) {
      if (!keep.has(id)) this.remove(id);
    }
    for (const alert of alerts) this.upsert(alert);
    this.reorder();
  }

  // One transition from the live stream; returns true if it is a new alert for the officer.
  apply(event: AlertEvent): boolean {
    if (event.state === "resolved") {
      this.remove(event.alert_id);
      this.reorder();
      return false;
    }
    const isNew = !this.cards.has(event.alert_id);
    const card = this.upsert(event);
    if (event.notification !== undefined && event.notification.recipients.length > 0) {
      card.lastNotice = `${event.transition} ${event.notification.recipients.join(", ")}`;
      card.tick(Date.now());
    }
    if (event.transition === "opened" || event.transition === "reopened") {
      card.el.classList.remove("flash");
      void card.el.offsetWidth; // restart the animation
      card.el.classList.add("flash");
    }
    this.reorder();
    return isNew;
  }

  upsert(alert: Alert): AlertCard {
    let card = this.cards.get(alert.alert_id);
    if (card === undefined) {
      card = new AlertCard(alert, this.dispositions, this.actions);
      this.cards.set(alert.alert_id, card);
    } else {
      card.update(alert, Date.now());
    }
    return card;
  }

  remove(alertId: string): void {
    this.cards.get(alertId)?.el.remove();
    this.cards.delete(alertId);
  }

  select(alertId: string): boolean {
    const card = this.cards.get(alertId);
    if (card === undefined) return false;
    this.container.querySelectorAll(".selected").forEach((el) => el.classList.remove("selected"));
    card.el.classList.add("selected");
    card.el.scrollIntoView({ block: "nearest" });
    return true;
  }

  subjectOf(alertId: string): string | undefined {
    return this.cards.get(alertId)?.alert.subject_id;
  }

  tick(now: number): void {
    for (const card of this.cards.values()) card.tick(now);
  }

  private reorder(): void {
    const sorted = [...this.cards.values()].sort((a, b) => alertOrder(a.alert, b.alert));
    // Move only what is out of place: moving a node would take the focus out of a form.
    sorted.forEach((card, index) => {
      if (this.container.children[index] !== card.el) {
        this.container.insertBefore(card.el, this.container.children[index] ?? null);
      }
    });
    this.empty.hidden = sorted.length > 0;
    setText(this.countBadge, sorted.length ? String(sorted.length) : "");
  }
}
