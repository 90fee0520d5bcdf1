// Blurhash placeholders (https://blurha.sh): a media object's `blurhash` decoded to a tiny image,
// as a data: URL (the CSP allows those), shown while the real image loads.

const DIGITS = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz#$%*+,-.:;=?@[]^_{|}~";
const cache = new Map();
const num = (s) => [...s].reduce((n, c) => n * 83 + DIGITS.indexOf(c), 0);
const linear = (v) => ((v /= 255) <= 0.04045 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4);
const srgb = (v) => ((v = Math.min(1, Math.max(0, v))) <= 0.0031308 ? v * 12.92 : 1.055 * v ** (1 / 2.4) - 0.055) * 255;

/** RGBA pixels of a blurhash at width x height; null when it is not one. */
export function decode(hash, width, height) {
  const size = num(hash[0] || "");
  const nx = (size % 9) + 1;
  const ny = Math.floor(size / 9) + 1;
  if (hash.length !== 4 + 2 * nx * ny) return null;
  const max = (num(hash[1]) + 1) / 166;
  const dc = num(hash.slice(2, 6));
  const colors = [[linear(dc >> 16), linear((dc >> 8) & 255), linear(dc & 255)]];
  for (let i = 1; i < nx * ny; i++) {
    const v = num(hash.slice(4 + i * 2, 6 + i * 2));
    colors.push([Math.floor(v / 361), Math.floor(v / 19) % 19, v % 19].map((q) => ((q - 9) / 9) * Math.abs((q - 9) / 9) * max));
  }
  const pixels = new Uint8ClampedArray(width * height * 4);
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) {
      const rgb = [0, 0, 0];
      colors.forEach((c, k) => {
        const basis = Math.cos((Math.PI * x * (k % nx)) / width) * Math.cos((Math.PI * y * Math.floor(k / nx)) / height);
        for (let j = 0; j < 3; j++) rgb[j] += c[j] * basis;
      });
      pixels.set([...rgb.map(srgb), 255], 4 * (x + y * width));
    }
  }
  return pixels;
}

/** A data: URL of the blurhash, 32 px on its long side (null when it is not one). Cached. */
export function blurhashURL(hash, ratio = 1) {
  const key = `${hash}/${ratio.toFixed(2)}`;
  if (!cache.has(key)) {
    const width = Math.round(ratio >= 1 ? 32 : Math.max(4, 32 * ratio));
    const height = Math.round(ratio >= 1 ? Math.max(4, 32 / ratio) : 32);
    const pixels = decode(hash, width, height);
    let url = null;
    if (pixels) {
      const c = document.createElement("canvas");
      c.width = width;
      c.height = height;
      c.getContext("2d").putImageData(new ImageData(pixels, width, height), 0, 0);
      url = c.toDataURL();
    }
    cache.set(key, url);
  }
  return cache.get(key);
}
