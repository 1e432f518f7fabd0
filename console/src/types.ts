// Shapes of the daemon's console API (daemon/console/web.py) and alert wire format
// (docs/wire.md). Only the fields the page uses are listed.

export type Status = "alert" | "acknowledged" | "stale" | "ok";
export type Tier = "critical" | "high" | "low";
export type AlertState = "open" | "acknowledged" | "resolved";

export interface MapSettings {
  tile_url: string | null;
  tile_attribution: string;
  tile_max_zoom: number;
  region_bbox: [number, number, number, number] | null;
  stale_after_seconds: number;
}

export interface Me {
  officer_id: string;
  name: string;
  role: "officer" | "supervisor" | "command";
  dispositions: string[];
  map: MapSettings;
}

export interface Fix {
  subject_id: string;
  device_id: string;
  ts: string;
  lat: number;
  lon: number;
  acc: number;
  src: string;
  batt: number | null;
}

export interface AlertCounts {
  open: number;
  acknowledged: number;
  top_tier: Tier | null;
}

export interface SubjectStatusView {
  subject_id: string;
  status: Status;
  alerts: AlertCounts;
}

export interface Subject extends SubjectStatusView {
  officer_id: string | null;
  officer_name: string;
  timezone: string;
  devices: string[];
  zones: { home: string | null; permitted: string | null; exclusions: string[] };
  last_fix: Fix | null;
}

export interface SubjectsAnswer {
  subjects: Subject[];
  as_of: string;
  positions_complete: boolean;
}

export interface Alert {
  alert_id: string;
  subject_id: string;
  device_id: string;
  rule: string;
  tier: Tier;
  state: AlertState;
  zone_id: string | null;
  officer_id: string | null;
  opened_at: string;
  updated_at: string;
  count: number;
  condition_active: boolean;
  cleared_at: string | null;
  acknowledged_at: string | null;
  acknowledged_by: string | null;
  resolved_at: string | null;
  resolved_by: string | null;
  disposition: string | null;
  reason: string;
}

export interface AlertEvent extends Alert {
  transition: string;
  transition_at: string;
  actor?: string;
  notification?: { action: string; step: number; recipients: string[]; reason: string };
  subject: SubjectStatusView;
}

export interface TrackPoint {
  device_id: string;
  ts: string;
  lat: number;
  lon: number;
  acc: number;
  src: string;
  batt: number | null;
}

export interface TrackAnswer {
  subject_id: string;
  from: string;
  to: string;
  count: number;
  truncated: boolean;
  points: TrackPoint[];
}

export interface ZoneProperties {
  id: string;
  name: string;
  kind: "inclusion" | "exclusion";
  role: "exclusion" | "home" | "permitted";
  subjects: string[];
}
