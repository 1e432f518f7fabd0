// Calls to the daemon's console API. The session is an HttpOnly cookie the page never
// sees; state-changing calls carry X-Emon-Console (the server's anti-forgery check).

export class ApiError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
  ) {
    super(message);
  }
}

const API = "/console/api";

export async function call<T>(method: string, path: string, body?: unknown): Promise<T> {
  const headers: Record<string, string> = { Accept: "application/json" };
  if (method !== "GET") {
    headers["X-Emon-Console"] = "1";
    headers["Content-Type"] = "application/json";
  }
  let response: Response;
  try {
    response = await fetch(API + path, {
      method,
      headers,
      credentials: "same-origin",
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch {
    throw new ApiError(0, "network", "The daemon cannot be reached.");
  }
  let payload: unknown = null;
  try {
    payload = await response.json();
  } catch {
    payload = null;
  }
  if (!response.ok) {
    const detail = payload as { error?: string; detail?: string } | null;
    throw new ApiError(
      response.status,
      detail?.error ?? "error",
      detail?.detail ?? `HTTP ${response.status}`,
    );
  }
  return payload as T;
}
