// The live stream (server-sent events from /console/api/events).
//
// The server may drop a stream that falls behind, and restarts drop every stream; the
// browser's EventSource reconnects by itself after a network error, but not after an
// HTTP error answer (e.g. 503 while the daemon starts), so that case reconnects here
// with a growing, jittered delay. Every (re)connection starts with a `hello` event, on
// which the page reloads its snapshot: nothing missed while disconnected stays missed.

import type { AlertEvent, Fix } from "./types";

export type LinkState = "connecting" | "live" | "reconnecting";

export interface LiveHandlers {
  hello(): void;
  position(fix: Fix): void;
  alert(event: AlertEvent): void;
  signedOut(): void;
  state(state: LinkState): void;
  // The server answered with an HTTP error (signed out? daemon starting?): the page checks.
  refused(): void;
}

const RETRY_MIN_MS = 1000;
const RETRY_MAX_MS = 30_000;

export class LiveStream {
  private source: EventSource | null = null;
  private retryMs = RETRY_MIN_MS;
  private retryTimer: number | undefined;
  private stopped = false;

  constructor(
    private readonly url: string,
    private readonly on: LiveHandlers,
  ) {}

  start(): void {
    this.stopped = false;
    this.open();
  }

  stop(): void {
    this.stopped = true;
    window.clearTimeout(this.retryTimer);
    this.source?.close();
    this.source = null;
  }

  private open(): void {
    this.on.state("connecting");
    const source = new EventSource(this.url);
    this.source = source;
    source.addEventListener("hello", () => {
      this.retryMs = RETRY_MIN_MS;
      this.on.state("live");
      this.on.hello();
    });
    source.addEventListener("position", (e) => {
      this.on.position(JSON.parse((e as MessageEvent<string>).data) as Fix);
    });
    source.addEventListener("alert", (e) => {
      this.on.alert(JSON.parse((e as MessageEvent<string>).data) as AlertEvent);
    });
    source.addEventListener("signed_out", () => {
      this.stop();
      this.on.signedOut();
    });
    source.onerror = () => {
      if (this.stopped) return;
      this.on.state("reconnecting");
      if (source.readyState === EventSource.CLOSED) {
        // An HTTP error answer: EventSource gives up; try again ourselves.
        this.on.refused();
        const delay = this.retryMs * (0.8 + Math.random() * 0.4);
        this.retryMs = Math.min(this.retryMs * 2, RETRY_MAX_MS);
        this.retryTimer = window.setTimeout(() => {
          if (!this.stopped) this.open();
        }, delay);
      }
    };
  }
}
