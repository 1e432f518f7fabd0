// Words and times as an officer reads them: local wall-clock time and plain ages.

// alerts/model.py RuleId; a rule not listed here shows its id with spaces.
const RULES: Record<string, string> = {
  strap_open: "Strap opened (tamper)",
  case_open: "Case opened (tamper)",
  exclusion_entry: "Entered exclusion zone",
  exclusion_crossed: "Crossed exclusion zone",
  exclusion_approach: "Near exclusion zone",
  boundary_exit: "Left permitted area",
  curfew_away: "Away from home in curfew",
  inclusion_away: "Away from scheduled place",
  leave_area_exit: "Outside approved leave area",
  device_silent: "Device silent (supervision lost)",
  gnss_lost: "GNSS fix lost",
  power_off: "Device switched off",
  battery_low: "Battery low",
  battery_critical: "Battery critical",
  // Issue 5 part B.
  trajectory_anomaly: "Day far from usual places",
  co_offender_gathering: "Met a co-offender",
  gathering: "Met another subject",
  victim_proximity: "Near a protected person",
  victim_approach: "Approaching a protected person",
};

const DISPOSITIONS: Record<string, string> = {
  confirmed_violation: "Confirmed violation",
  false_alarm: "False alarm",
  device_fault: "Device fault",
  approved: "Approved (e.g. leave)",
};

export function ruleLabel(rule: string): string {
  return RULES[rule] ?? rule.replace(/_/g, " ");
}

export function dispositionLabel(disposition: string): string {
  return DISPOSITIONS[disposition] ?? disposition.replace(/_/g, " ");
}

export function age(fromIso: string, now: number): string {
  const seconds = Math.max(0, Math.round((now - Date.parse(fromIso)) / 1000));
  if (seconds < 60) return `${seconds} s`;
  const minutes = Math.floor(seconds / 60);
  if (minutes < 60) return `${minutes} min`;
  const hours = Math.floor(minutes / 60);
  if (hours < 48) return `${hours} h ${minutes % 60} min`;
  return `${Math.floor(hours / 24)} d ${hours % 24} h`;
}

const timeFormat = new Intl.DateTimeFormat(undefined, {
  month: "2-digit",
  day: "2-digit",
  hour: "2-digit",
  minute: "2-digit",
  second: "2-digit",
  hour12: false,
});

export function clock(iso: string): string {
  return timeFormat.format(new Date(iso));
}

// A <input type="datetime-local"> value (local time, minutes) for a moment.
export function localInputValue(ms: number): string {
  const d = new Date(ms - new Date(ms).getTimezoneOffset() * 60_000);
  return d.toISOString().slice(0, 16);
}
