// The map: zones, subjects' newest positions coloured by status, one track.
//
// With no tile server configured (the default, and the only choice with no internet) it
// draws on a plain background: the permitted districts, homes and exclusion zones give
// the picture its geography. A tile server is used only when settings.yaml names one.

import L from "leaflet";
import "leaflet/dist/leaflet.css";

import { clock } from "./format";
import type { Fix, MapSettings, Status, TrackPoint, ZoneProperties } from "./types";

export const STATUS_COLOURS: Record<Status, string> = {
  alert: "#ff4d4f",
  acknowledged: "#ffb020",
  stale: "#8a94a6",
  ok: "#34c759",
};

const ZONE_STYLES: Record<ZoneProperties["role"], L.PathOptions> = {
  permitted: { color: "#5aa9ff", weight: 2, dashArray: "6 5", fillOpacity: 0.03 },
  home: { color: "#34c759", weight: 2, fillColor: "#34c759", fillOpacity: 0.15 },
  exclusion: { color: "#ff4d4f", weight: 2, fillColor: "#ff4d4f", fillOpacity: 0.3 },
};

interface SubjectLayer {
  marker: L.CircleMarker;
  accuracy: L.Circle;
  status: Status;
}

export class ConsoleMap {
  private readonly map: L.Map;
  private readonly zones = L.featureGroup();
  private readonly subjects = new Map<string, SubjectLayer>();
  private readonly subjectLayer = L.featureGroup();
  private track: L.FeatureGroup | null = null;
  private fitted = false;

  constructor(element: HTMLElement, settings: MapSettings, onSubjectClick: (id: string) => void) {
    this.onSubjectClick = onSubjectClick;
    this.map = L.map(element, {
      zoomSnap: 0.25,
      attributionControl: settings.tile_url !== null,
      maxZoom: settings.tile_url !== null ? settings.tile_max_zoom : 20,
    });
    if (settings.tile_url !== null) {
      L.tileLayer(settings.tile_url, {
        attribution: settings.tile_attribution,
        maxZoom: settings.tile_max_zoom,
      }).addTo(this.map);
    } else {
      element.classList.add("plain-map");
    }
    // Drawing order: zones (overlay pane, 400), then a track, then subjects on top, so a
    // track's end never hides the marker of the subject standing there.
    this.map.createPane("track").style.zIndex = "410";
    this.map.createPane("subjects").style.zIndex = "420";
    L.control.scale({ imperial: false }).addTo(this.map);
    this.addFitAllControl();
    this.zones.addTo(this.map);
    this.subjectLayer.addTo(this.map);
    const bbox = settings.region_bbox;
    if (bbox !== null) {
      this.map.fitBounds([
        [bbox[1], bbox[0]],
        [bbox[3], bbox[2]],
      ]);
    } else {
      this.map.setView([0, 0], 2);
    }
  }

  private readonly onSubjectClick: (id: string) => void;

  setZones(collection: GeoJSON.FeatureCollection<GeoJSON.Geometry, ZoneProperties>): void {
    this.zones.clearLayers();
    L.geoJSON(collection, {
      style: (feature) => {
        const p = feature?.properties as ZoneProperties;
        return { ...ZONE_STYLES[p.role], className: `zone zone-${p.role} zone-${p.id}` };
      },
      onEachFeature: (feature, layer) => {
        const p = feature.properties as ZoneProperties;
        layer.bindTooltip(`${p.name} (${p.role}: ${p.subjects.join(", ")})`, { sticky: true });
      },
    }).addTo(this.zones);
    // Homes and exclusion zones above the large districts, so their tooltips win.
    this.zones.eachLayer((group) => {
      (group as L.GeoJSON).eachLayer((layer) => {
        const role = ((layer as L.GeoJSON).feature as GeoJSON.Feature).properties?.role;
        if (role !== "permitted") (layer as L.Path).bringToFront();
      });
    });
    this.fitOnce();
  }

  upsertSubject(subjectId: string, fix: Fix | null, status: Status): void {
    const existing = this.subjects.get(subjectId);
    if (fix === null) {
      if (existing !== undefined) {
        this.subjectLayer.removeLayer(existing.marker);
        this.subjectLayer.removeLayer(existing.accuracy);
        this.subjects.delete(subjectId);
      }
      return;
    }
    const at = L.latLng(fix.lat, fix.lon);
    const colour = STATUS_COLOURS[status];
    if (existing === undefined) {
      const accuracy = L.circle(at, {
        radius: fix.acc,
        interactive: false,
        weight: 1,
        color: colour,
        fillOpacity: 0.08,
        className: "accuracy",
        pane: "subjects",
      });
      const marker = L.circleMarker(at, {
        radius: 8,
        weight: 3,
        color: "#0b0f14",
        fillColor: colour,
        fillOpacity: 1,
        className: `subject-marker subject-${subjectId} status-${status}`,
        pane: "subjects",
      });
      marker.bindTooltip(subjectId, {
        permanent: true,
        direction: "right",
        offset: [10, 0],
        className: "subject-label",
      });
      marker.on("click", () => this.onSubjectClick(subjectId));
      accuracy.addTo(this.subjectLayer);
      marker.addTo(this.subjectLayer);
      this.subjects.set(subjectId, { marker, accuracy, status });
    } else {
      existing.marker.setLatLng(at);
      existing.accuracy.setLatLng(at).setRadius(fix.acc);
      if (existing.status !== status) {
        const el = existing.marker.getElement();
        el?.classList.remove(`status-${existing.status}`);
        el?.classList.add(`status-${status}`);
        existing.marker.setStyle({ fillColor: colour });
        existing.accuracy.setStyle({ color: colour });
        existing.status = status;
      }
    }
    const layer = this.subjects.get(subjectId);
    layer?.marker
      .getElement()
      ?.setAttribute("aria-label", `${subjectId} · ${fix.device_id} · ${clock(fix.ts)} · ±${Math.round(fix.acc)} m`);
    if (status === "alert") layer?.marker.bringToFront();
    this.fitOnce();
  }

  focusSubject(subjectId: string): void {
    const layer = this.subjects.get(subjectId);
    if (layer !== undefined) {
      this.map.setView(layer.marker.getLatLng(), Math.max(this.map.getZoom(), 15));
    }
  }

  showTrack(points: TrackPoint[]): void {
    this.clearTrack();
    if (points.length === 0) return;
    const group = L.featureGroup();
    const line = points.map((p) => L.latLng(p.lat, p.lon));
    L.polyline(line, { color: "#c792ff", weight: 3, opacity: 0.9, className: "track", pane: "track" }).addTo(
      group,
    );
    points.forEach((p, i) => {
      const last = i === points.length - 1;
      const first = i === 0;
      L.circleMarker([p.lat, p.lon], {
        radius: first || last ? 6 : 3,
        weight: first || last ? 2 : 0,
        color: "#ffffff",
        fillColor: "#c792ff",
        fillOpacity: 1,
        className: first ? "track-start" : last ? "track-end" : "track-point",
        pane: "track",
      })
        .bindTooltip(`${clock(p.ts)} · ±${Math.round(p.acc)} m · ${p.src}`)
        .addTo(group);
    });
    group.addTo(this.map);
    this.track = group;
    this.map.fitBounds(group.getBounds(), { padding: [40, 40], maxZoom: 17 });
  }

  clearTrack(): void {
    if (this.track !== null) {
      this.map.removeLayer(this.track);
      this.track = null;
    }
  }

  invalidateSize(): void {
    this.map.invalidateSize();
  }

  // The officer's own picture: their subjects, homes and exclusion zones. The permitted
  // districts are left out: framing a whole district makes every subject a dot.
  fitAll(): void {
    const bounds = L.latLngBounds([]);
    this.zones.eachLayer((group) => {
      (group as L.GeoJSON).eachLayer((layer) => {
        const role = ((layer as L.GeoJSON).feature as GeoJSON.Feature).properties?.role;
        if (role !== "permitted") bounds.extend((layer as L.Polygon).getBounds());
      });
    });
    if (this.subjectLayer.getLayers().length > 0) bounds.extend(this.subjectLayer.getBounds());
    if (!bounds.isValid() && this.zones.getLayers().length > 0) bounds.extend(this.zones.getBounds());
    // Room on the right for the subjects' labels.
    if (bounds.isValid()) this.map.fitBounds(bounds, { paddingTopLeft: [50, 50], paddingBottomRight: [90, 50], maxZoom: 16 });
  }

  private addFitAllControl(): void {
    const control = new L.Control({ position: "topleft" });
    control.onAdd = () => {
      const bar = L.DomUtil.create("div", "leaflet-bar fit-all");
      const button = L.DomUtil.create("a", "", bar);
      button.href = "#";
      button.title = "Show all my subjects";
      button.setAttribute("role", "button");
      button.textContent = "All";
      L.DomEvent.disableClickPropagation(bar);
      L.DomEvent.on(button, "click", (event) => {
        L.DomEvent.preventDefault(event);
        this.fitAll();
      });
      return bar;
    };
    control.addTo(this.map);
  }

  // Once zones and positions are in, frame them (then the view is the officer's).
  private fitOnce(): void {
    if (this.fitted) return;
    if (this.zones.getLayers().length === 0) return;
    this.fitAll();
    this.fitted = this.subjectLayer.getLayers().length > 0;
  }
}
