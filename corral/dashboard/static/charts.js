// Small canvas charts for the corral dashboard: a time-series line chart, a bar chart and a
// Gantt-style timeline. Written for this page; no library.
"use strict";

const Charts = (() => {
  const FONT = "11px system-ui, -apple-system, 'Segoe UI', Roboto, sans-serif";
  const AXIS = "#8a95a8";
  const GRID = "#edf0f5";

  // Size the canvas backing store to its CSS box (crisp on any pixel ratio); returns a
  // context whose units are CSS pixels, with the box's width and height.
  function prepare(canvas) {
    const ratio = window.devicePixelRatio || 1;
    const width = canvas.clientWidth;
    const height = canvas.clientHeight;
    if (canvas.width !== Math.round(width * ratio) || canvas.height !== Math.round(height * ratio)) {
      canvas.width = Math.round(width * ratio);
      canvas.height = Math.round(height * ratio);
    }
    const ctx = canvas.getContext("2d");
    ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
    ctx.clearRect(0, 0, width, height);
    ctx.font = FONT;
    return { ctx, width, height };
  }

  // A "nice" upper bound and step for an axis reaching at least max.
  function niceScale(max, ticks) {
    if (!(max > 0)) return { top: 1, step: 1 / ticks };
    const raw = max / ticks;
    const power = Math.pow(10, Math.floor(Math.log10(raw)));
    const step = [1, 2, 2.5, 5, 10].map((m) => m * power).find((s) => s >= raw);
    return { top: step * Math.ceil(max / step), step };
  }

  function formatNumber(value) {
    if (value >= 1e6) return (value / 1e6).toFixed(1) + "M";
    if (value >= 1e4) return (value / 1e3).toFixed(0) + "k";
    if (value >= 1e3) return (value / 1e3).toFixed(1) + "k";
    return Number.isInteger(value) ? String(value) : value.toFixed(1);
  }

  function clock(seconds) {
    const d = new Date(seconds * 1000);
    return d.toTimeString().slice(0, 8);
  }

  function timeAxis(ctx, left, right, bottom, start, end, top) {
    const span = end - start;
    const steps = [5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600];
    const step = steps.find((s) => span / s <= 6) || 3600;
    ctx.fillStyle = AXIS;
    ctx.textAlign = "center";
    ctx.textBaseline = "top";
    for (let t = Math.ceil(start / step) * step; t <= end; t += step) {
      const x = left + ((t - start) / span) * (right - left);
      ctx.strokeStyle = GRID;
      ctx.beginPath();
      ctx.moveTo(x + 0.5, top);
      ctx.lineTo(x + 0.5, bottom);
      ctx.stroke();
      ctx.fillText(clock(t), x, bottom + 4);
    }
  }

  // series: [{color, points: [[t, v], ...], fill}], window: seconds shown up to `now`.
  function line(canvas, series, now, window) {
    const { ctx, width, height } = prepare(canvas);
    const pad = { left: 44, right: 28, top: 8, bottom: 20 };
    const right = width - pad.right;
    const bottom = height - pad.bottom;
    const start = now - window;
    let max = 0;
    for (const s of series) for (const [t, v] of s.points) if (t >= start && v > max) max = v;
    const { top, step } = niceScale(max, 4);
    ctx.textAlign = "right";
    ctx.textBaseline = "middle";
    for (let v = 0; v <= top + step / 2; v += step) {
      const y = bottom - (v / top) * (bottom - pad.top);
      ctx.strokeStyle = GRID;
      ctx.beginPath();
      ctx.moveTo(pad.left, Math.round(y) + 0.5);
      ctx.lineTo(right, Math.round(y) + 0.5);
      ctx.stroke();
      ctx.fillStyle = AXIS;
      ctx.fillText(formatNumber(v), pad.left - 6, y);
    }
    timeAxis(ctx, pad.left, right, bottom, start, now, pad.top);
    const x = (t) => pad.left + ((t - start) / window) * (right - pad.left);
    const y = (v) => bottom - (v / top) * (bottom - pad.top);
    for (const s of series) {
      const points = s.points.filter(([t]) => t >= start);
      if (points.length < 2) continue;
      ctx.beginPath();
      points.forEach(([t, v], i) => (i ? ctx.lineTo(x(t), y(v)) : ctx.moveTo(x(t), y(v))));
      if (s.fill) {
        ctx.lineTo(x(points[points.length - 1][0]), bottom);
        ctx.lineTo(x(points[0][0]), bottom);
        ctx.closePath();
        ctx.fillStyle = s.fill;
        ctx.fill();
        ctx.beginPath();
        points.forEach(([t, v], i) => (i ? ctx.lineTo(x(t), y(v)) : ctx.moveTo(x(t), y(v))));
      }
      ctx.strokeStyle = s.color;
      ctx.lineWidth = 1.8;
      ctx.lineJoin = "round";
      ctx.stroke();
      ctx.lineWidth = 1;
    }
  }

  // bars: [{label, value, color}]; many bars thin out their labels.
  function bars(canvas, items) {
    const { ctx, width, height } = prepare(canvas);
    const pad = { left: 44, right: 28, top: 8, bottom: 20 };
    const bottom = height - pad.bottom;
    const max = Math.max(0, ...items.map((b) => b.value));
    const { top, step } = niceScale(max, 4);
    ctx.textAlign = "right";
    ctx.textBaseline = "middle";
    for (let v = 0; v <= top + step / 2; v += step) {
      const y = bottom - (v / top) * (bottom - pad.top);
      ctx.strokeStyle = GRID;
      ctx.beginPath();
      ctx.moveTo(pad.left, Math.round(y) + 0.5);
      ctx.lineTo(width - pad.right, Math.round(y) + 0.5);
      ctx.stroke();
      ctx.fillStyle = AXIS;
      ctx.fillText(formatNumber(v), pad.left - 6, y);
    }
    if (!items.length) return;
    const slot = (width - pad.left - pad.right) / items.length;
    const barWidth = Math.max(1, Math.min(36, slot * 0.7));
    const every = Math.ceil(items.length / Math.max(1, Math.floor((width - pad.left) / 34)));
    ctx.textAlign = "center";
    ctx.textBaseline = "top";
    items.forEach((b, i) => {
      const cx = pad.left + slot * (i + 0.5);
      const h = (b.value / top) * (bottom - pad.top);
      ctx.fillStyle = b.color;
      ctx.fillRect(cx - barWidth / 2, bottom - h, barWidth, h);
      if (i % every === 0 || b.always) {
        ctx.fillStyle = AXIS;
        ctx.fillText(b.label, cx, bottom + 4);
      }
    });
  }

  // lanes: engine ids (top to bottom); items: {lane, start, end, color} in seconds.
  function timeline(canvas, lanes, items, now, window, emptyText) {
    const { ctx, width, height } = prepare(canvas);
    const pad = { left: 44, right: 28, top: 6, bottom: 20 };
    const right = width - pad.right;
    const bottom = height - pad.bottom;
    const start = now - window;
    const laneHeight = lanes.length ? (bottom - pad.top) / lanes.length : 0;
    const row = new Map(lanes.map((lane, i) => [lane, i]));
    timeAxis(ctx, pad.left, right, bottom, start, now, pad.top);
    ctx.textAlign = "right";
    ctx.textBaseline = "middle";
    const labelEvery = Math.ceil(12 / Math.max(1, laneHeight));
    lanes.forEach((lane, i) => {
      const y = pad.top + i * laneHeight;
      if (i % 2 === 1) {
        ctx.fillStyle = "#f8f9fc";
        ctx.fillRect(pad.left, y, right - pad.left, laneHeight);
      }
      if (i % labelEvery === 0) {
        ctx.fillStyle = AXIS;
        ctx.fillText(String(lane), pad.left - 6, y + laneHeight / 2);
      }
    });
    const scale = (right - pad.left) / window;
    const gap = laneHeight > 6 ? Math.min(3, laneHeight * 0.15) : 0;
    // Tasks that touch (within a pixel) in one lane and colour are drawn as one bar: a busy
    // engine runs thousands of short tasks a minute, and one rectangle each would cost the
    // browser more than the page is worth.
    const runs = new Map(); // lane row -> [x0, x1, color]
    const draw = (i, [x0, x1, color]) => {
      ctx.fillStyle = color;
      ctx.fillRect(x0, pad.top + i * laneHeight + gap, Math.max(1, x1 - x0), laneHeight - 2 * gap);
    };
    for (const item of items) {
      const i = row.get(item.lane);
      if (i === undefined || item.end < start) continue;
      const x0 = pad.left + Math.max(0, item.start - start) * scale;
      const x1 = pad.left + (item.end - start) * scale;
      const run = runs.get(i);
      if (run && run[2] === item.color && x0 <= run[1] + 1 && x1 >= run[0] - 1) {
        run[0] = Math.min(run[0], x0);
        run[1] = Math.max(run[1], x1);
        continue;
      }
      if (run) draw(i, run);
      runs.set(i, [x0, x1, item.color]);
    }
    for (const [i, run] of runs) draw(i, run);
    if (!items.length && emptyText) {
      ctx.fillStyle = AXIS;
      ctx.textAlign = "center";
      ctx.fillText(emptyText, (pad.left + right) / 2, (pad.top + bottom) / 2);
    }
  }

  return { line, bars, timeline, formatNumber };
})();
