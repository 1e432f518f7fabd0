// The emon officer console: sign-in, then the map, the open alerts and the subjects, kept
// current by the live stream.

import "./style.css";

import { AlertList } from "./alerts";
import { ApiError, call } from "./api";
import { byId, setText } from "./dom";
import { clock, localInputValue } from "./format";
import { LiveStream, type LinkState } from "./live";
import { ConsoleMap } from "./map";
import { SubjectTable } from "./subjects";
import type {
  Alert,
  AlertEvent,
  Fix,
  Me,
  SubjectsAnswer,
  TrackAnswer,
  ZoneProperties,
} from "./types";

const TICK_MS = 5000;
const TITLE = "emon console";

// /console/alerts/<id>: the link in notification messages opens that alert.
const deepLinkAlert = /^\/console\/alerts\/([0-9a-f-]{36})$/.exec(location.pathname)?.[1] ?? null;

function showLogin(message = ""): void {
  byId("app").hidden = true;
  byId("login").hidden = false;
  setText(byId("login-error"), message);
  byId<HTMLInputElement>("login-token").focus();
}

async function signIn(event: SubmitEvent): Promise<void> {
  event.preventDefault();
  const input = byId<HTMLInputElement>("login-token");
  const button = byId<HTMLButtonElement>("login-submit");
  button.disabled = true;
  try {
    await call<Me>("POST", "/session", { token: input.value.trim() });
    input.value = "";
    location.reload(); // a clean start as the signed-in officer
  } catch (error) {
    setText(
      byId("login-error"),
      error instanceof ApiError && error.status === 401
        ? "This token is unknown, expired or revoked."
        : error instanceof Error
          ? error.message
          : String(error),
    );
  } finally {
    button.disabled = false;
  }
}

class Console {
  private readonly map: ConsoleMap;
  private readonly alerts: AlertList;
  private readonly subjects: SubjectTable;
  private readonly live: LiveStream;
  // Events that arrive while a snapshot loads are applied after it, in order.
  private buffer: Array<() => void> | null = null;
  private deepLinkDone = deepLinkAlert === null;

  constructor(me: Me) {
    setText(byId("who"), `${me.name} · ${me.role}`);
    this.map = new ConsoleMap(byId("map"), me.map, (id) => this.locate(id));
    this.alerts = new AlertList(byId("alerts"), byId("alerts-empty"), byId("alert-count"), me.dispositions, {
      acknowledge: (id) => this.act(id, "ack", {}),
      resolve: (id, disposition, note) => this.act(id, "resolve", { disposition, note: note || undefined }),
      locate: (id) => this.locate(id),
    });
    this.subjects = new SubjectTable(byId("subjects"), me.map.stale_after_seconds, {
      locate: (id) => this.locate(id),
      track: (id) => this.chooseTrack(id, 24),
      changed: (subject, status) => this.map.upsertSubject(subject.subject_id, subject.last_fix, status),
    });
    this.live = new LiveStream("/console/api/events", {
      hello: () => void this.resync(),
      position: (fix) => this.defer(() => this.position(fix)),
      alert: (event) => this.defer(() => this.alertEvent(event)),
      signedOut: () => showLogin("Your sign-in has ended. Sign in again."),
      state: (state) => this.linkState(state),
      refused: () => void this.checkSignedIn(),
    });
    this.wireTrackForm();
    byId("logout").addEventListener("click", () => void this.signOut());
    window.setInterval(() => this.tick(), TICK_MS);
  }

  async start(): Promise<void> {
    const zones = await call<GeoJSON.FeatureCollection<GeoJSON.Geometry, ZoneProperties>>("GET", "/zones");
    this.map.setZones(zones);
    this.live.start();
  }

  private defer(apply: () => void): void {
    if (this.buffer !== null) this.buffer.push(apply);
    else apply();
  }

  // On every (re)connection: the snapshot, then what arrived meanwhile.
  private async resync(): Promise<void> {
    if (this.buffer !== null) return; // one load at a time; its buffer catches up
    this.buffer = [];
    try {
      const [subjects, alerts] = await Promise.all([
        call<SubjectsAnswer>("GET", "/subjects"),
        call<{ alerts: Alert[] }>("GET", "/alerts"),
      ]);
      this.subjects.replaceAll(subjects.subjects);
      this.alerts.replaceAll(alerts.alerts);
      setText(byId("notice"), subjects.positions_complete ? "" : "Database away: showing live positions only.");
    } catch (error) {
      if (error instanceof ApiError && error.status === 401) {
        this.live.stop();
        showLogin("Your sign-in has ended. Sign in again.");
        return;
      }
      setText(byId("notice"), `Could not load: ${error instanceof Error ? error.message : error}`);
    } finally {
      const pending = this.buffer ?? [];
      this.buffer = null;
      pending.forEach((apply) => apply());
      this.updateCounts();
      this.fillSubjectChoice();
      this.openDeepLink();
    }
  }

  private position(fix: Fix): void {
    this.subjects.position(fix);
  }

  private alertEvent(event: AlertEvent): void {
    const isNew = this.alerts.apply(event);
    this.subjects.status(event.subject);
    this.updateCounts();
    if (isNew) setText(byId("notice"), `New ${event.tier} alert: ${event.subject_id} at ${clock(event.transition_at)}`);
  }

  private async act(alertId: string, action: "ack" | "resolve", body: object): Promise<void> {
    const answer = await call<{ alert: Alert; recorded: boolean }>("POST", `/alerts/${alertId}/${action}`, body);
    if (answer.alert.state === "resolved") this.alerts.remove(alertId);
    else this.alerts.upsert(answer.alert);
    this.updateCounts();
    if (!answer.recorded) setText(byId("notice"), "Done; the database is away and will record it when back.");
  }

  private locate(subjectId: string): void {
    this.map.focusSubject(subjectId);
    document.querySelectorAll("#subjects tr.selected").forEach((r) => r.classList.remove("selected"));
    document.querySelector(`#subjects tr[data-subject-id="${CSS.escape(subjectId)}"]`)?.classList.add("selected");
  }

  private openDeepLink(): void {
    if (this.deepLinkDone || deepLinkAlert === null) return;
    this.deepLinkDone = true;
    if (this.alerts.select(deepLinkAlert)) {
      const subject = this.alerts.subjectOf(deepLinkAlert);
      if (subject !== undefined) this.locate(subject);
    } else {
      setText(byId("notice"), "That alert is resolved or not in your caseload.");
    }
  }

  private linkState(state: LinkState): void {
    const el = byId("link-state");
    el.dataset.state = state;
    setText(el, state === "live" ? "LIVE" : state === "connecting" ? "connecting…" : "RECONNECTING");
  }

  private async checkSignedIn(): Promise<void> {
    try {
      await call<Me>("GET", "/me");
    } catch (error) {
      if (error instanceof ApiError && error.status === 401) {
        this.live.stop();
        showLogin("Your sign-in has ended. Sign in again.");
      }
    }
  }

  private async signOut(): Promise<void> {
    this.live.stop();
    try {
      await call("DELETE", "/session");
    } finally {
      showLogin("Signed out.");
    }
  }

  private updateCounts(): void {
    const alerts = this.alerts.alerts;
    const open = alerts.filter((a) => a.state === "open").length;
    setText(byId("counts"), `${open} unowned · ${alerts.length - open} owned`);
    document.title = open > 0 ? `(${open}) ${TITLE}` : TITLE;
  }

  private tick(): void {
    const now = Date.now();
    this.alerts.tick(now);
    this.subjects.tick();
  }

  // ------------------------------------------------------------------ track

  private wireTrackForm(): void {
    const form = byId<HTMLFormElement>("track-form");
    form.querySelectorAll<HTMLButtonElement>("button[data-hours]").forEach((button) => {
      button.addEventListener("click", () => this.setPeriod(Number(button.dataset.hours)));
    });
    this.setPeriod(24);
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      void this.showTrack();
    });
    byId("track-clear").addEventListener("click", () => {
      this.map.clearTrack();
      setText(byId("track-result"), "");
    });
  }

  private setPeriod(hours: number): void {
    const now = Date.now();
    byId<HTMLInputElement>("track-to").value = localInputValue(now + 60_000);
    byId<HTMLInputElement>("track-from").value = localInputValue(now - hours * 3_600_000);
  }

  private fillSubjectChoice(): void {
    const select = byId<HTMLSelectElement>("track-subject");
    const ids = this.subjects.ids.sort();
    if ([...select.options].map((o) => o.value).join() === ids.join()) return;
    const chosen = select.value;
    select.replaceChildren(...ids.map((id) => new Option(id, id)));
    if (ids.includes(chosen)) select.value = chosen;
  }

  private chooseTrack(subjectId: string, hours: number): void {
    this.fillSubjectChoice();
    byId<HTMLSelectElement>("track-subject").value = subjectId;
    this.setPeriod(hours);
    void this.showTrack();
  }

  private async showTrack(): Promise<void> {
    const subject = byId<HTMLSelectElement>("track-subject").value;
    const from = new Date(byId<HTMLInputElement>("track-from").value);
    const to = new Date(byId<HTMLInputElement>("track-to").value);
    const result = byId("track-result");
    if (!subject || Number.isNaN(from.getTime()) || Number.isNaN(to.getTime())) {
      setText(result, "Choose a subject and a period.");
      return;
    }
    setText(result, "Loading…");
    try {
      const query = new URLSearchParams({ from: from.toISOString(), to: to.toISOString() });
      const track = await call<TrackAnswer>("GET", `/subjects/${encodeURIComponent(subject)}/track?${query}`);
      this.map.showTrack(track.points);
      result.dataset.count = String(track.count);
      if (track.count === 0) setText(result, `${subject}: no fixes in this period.`);
      else
        setText(
          result,
          `${subject}: ${track.count} fixes, ${clock(track.points[0].ts)} to ${clock(track.points[track.count - 1].ts)}` +
            (track.truncated ? ` (the newest ${track.count}; narrow the period for older ones)` : ""),
        );
    } catch (error) {
      setText(result, error instanceof Error ? error.message : String(error));
    }
  }
}

async function main(): Promise<void> {
  byId<HTMLFormElement>("login-form").addEventListener("submit", (e) => void signIn(e as SubmitEvent));
  let me: Me;
  try {
    me = await call<Me>("GET", "/me");
  } catch (error) {
    showLogin(error instanceof ApiError && error.status === 401 ? "" : String(error));
    return;
  }
  byId("login").hidden = true;
  byId("app").hidden = false;
  await new Console(me).start();
}

void main();
