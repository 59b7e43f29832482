// Hand-written SVG line chart: effective transfer rate per codec against link rate.
export interface Series {
  name: string;
  points: number[]; // MB/s, one per x
}

const COLORS = ['#1f77b4', '#d62728', '#2ca02c', '#9467bd', '#ff7f0e', '#8c564b'];

export function lineChartSvg(title: string, xLabels: string[], series: Series[], yLabel: string): string {
  const W = 720;
  const H = 420;
  const left = 70;
  const right = 170;
  const top = 40;
  const bottom = 50;
  const all = series.flatMap((s) => s.points).filter((v) => v > 0);
  const lo = Math.pow(10, Math.floor(Math.log10(Math.min(...all))));
  const hi = Math.pow(10, Math.ceil(Math.log10(Math.max(...all))));
  const x = (i: number) => left + (i * (W - left - right)) / Math.max(1, xLabels.length - 1);
  const y = (v: number) =>
    top + ((Math.log10(hi) - Math.log10(Math.max(v, lo))) * (H - top - bottom)) / (Math.log10(hi) - Math.log10(lo));
  const parts: string[] = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" font-family="sans-serif" font-size="12">`,
    `<rect width="${W}" height="${H}" fill="white"/>`,
    `<text x="${W / 2}" y="22" text-anchor="middle" font-size="15">${title}</text>`,
  ];
  for (let d = lo; d <= hi; d *= 10) {
    parts.push(`<line x1="${left}" x2="${W - right}" y1="${y(d)}" y2="${y(d)}" stroke="#ddd"/>`);
    parts.push(`<text x="${left - 6}" y="${y(d) + 4}" text-anchor="end">${d >= 1 ? d : d.toPrecision(1)}</text>`);
  }
  xLabels.forEach((label, i) => {
    parts.push(`<line x1="${x(i)}" x2="${x(i)}" y1="${top}" y2="${H - bottom}" stroke="#eee"/>`);
    parts.push(`<text x="${x(i)}" y="${H - bottom + 18}" text-anchor="middle">${label}</text>`);
  });
  parts.push(`<text x="${(left + W - right) / 2}" y="${H - 10}" text-anchor="middle">link rate</text>`);
  parts.push(
    `<text transform="translate(16 ${(top + H - bottom) / 2}) rotate(-90)" text-anchor="middle">${yLabel}</text>`,
  );
  series.forEach((s, k) => {
    const color = COLORS[k % COLORS.length];
    const dash = s.name === 'link' ? ' stroke-dasharray="5 4"' : '';
    const d = s.points.map((v, i) => `${i ? 'L' : 'M'}${x(i).toFixed(1)},${y(v).toFixed(1)}`).join(' ');
    parts.push(`<path d="${d}" fill="none" stroke="${color}" stroke-width="2"${dash}/>`);
    s.points.forEach((v, i) =>
      parts.push(`<circle cx="${x(i).toFixed(1)}" cy="${y(v).toFixed(1)}" r="3" fill="${color}"/>`),
    );
    const ly = top + 10 + k * 20;
    parts.push(
      `<line x1="${W - right + 15}" x2="${W - right + 40}" y1="${ly}" y2="${ly}" stroke="${color}" stroke-width="2"${dash}/>`,
    );
    parts.push(`<text x="${W - right + 46}" y="${ly + 4}">${s.name}</text>`);
  });
  parts.push('</svg>');
  return parts.join('\n') + '\n';
}
