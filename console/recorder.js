// Recording from the microphone, encoded in the page as a WAV file the audio handler accepts (16-bit
// PCM, mono, at the device's rate: the handler resamples to the model's). MediaRecorder would give
// WebM/Opus, which the handler does not decode.

export class Recording {
  static async start() {
    // The raw signal: echo cancellation and noise suppression would change what the model hears.
    const stream = await navigator.mediaDevices.getUserMedia(
      {audio: {echoCancellation: false, noiseSuppression: false, autoGainControl: false}});
    const context = new AudioContext();
    try {
      await context.audioWorklet.addModule("recorder-worklet.js");
    } catch (error) {
      stream.getTracks().forEach((track) => track.stop());
      await context.close();
      throw error;
    }
    return new Recording(stream, context);
  }

  constructor(stream, context) {
    this.stream = stream;
    this.context = context;
    this.chunks = [];
    this.capture = new AudioWorkletNode(context, "mono-capture");
    this.capture.port.onmessage = (event) => this.chunks.push(event.data);
    this.source = context.createMediaStreamSource(stream);
    this.source.connect(this.capture);
    // Connected to the output so that the graph pulls it; the node writes nothing, so nothing is heard.
    this.capture.connect(context.destination);
    this.startedAt = performance.now();
  }

  get seconds() { return (performance.now() - this.startedAt) / 1000; }

  // Stops the microphone and returns the recording as a WAV Blob.
  async stop() {
    const flushed = new Promise((resolve) => {
      this.capture.port.onmessage = (event) => { this.chunks.push(event.data); resolve(); };
    });
    this.capture.port.postMessage("flush");
    await flushed;
    this.source.disconnect();
    this.capture.disconnect();
    this.stream.getTracks().forEach((track) => track.stop());
    const sampleRate = this.context.sampleRate;
    await this.context.close();
    return encodeWav(this.chunks, sampleRate);
  }
}

// Float samples in [-1, 1] → a RIFF/WAVE file: 16-bit little-endian PCM, one channel.
export function encodeWav(chunks, sampleRate) {
  const length = chunks.reduce((total, chunk) => total + chunk.length, 0);
  const buffer = new ArrayBuffer(44 + 2 * length);
  const view = new DataView(buffer);
  const ascii = (offset, text) => [...text].forEach((c, i) => view.setUint8(offset + i, c.charCodeAt(0)));
  ascii(0, "RIFF");
  view.setUint32(4, 36 + 2 * length, true);
  ascii(8, "WAVE");
  ascii(12, "fmt ");
  view.setUint32(16, 16, true);              // size of the fmt chunk
  view.setUint16(20, 1, true);               // PCM
  view.setUint16(22, 1, true);               // channels
  view.setUint32(24, sampleRate, true);
  view.setUint32(28, sampleRate * 2, true);  // bytes per second
  view.setUint16(32, 2, true);               // bytes per frame
  view.setUint16(34, 16, true);              // bits per sample
  ascii(36, "data");
  view.setUint32(40, 2 * length, true);
  let offset = 44;
  for (const chunk of chunks) {
    for (const sample of chunk) {
      const clipped = Math.max(-1, Math.min(1, sample));
      view.setInt16(offset, clipped < 0 ? clipped * 0x8000 : clipped * 0x7fff, true);
      offset += 2;
    }
  }
  return new Blob([buffer], {type: "audio/wav"});
}
