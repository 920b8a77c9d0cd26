// Codec preferences for what the SFU forwards (it never transcodes).

/**
 * Put VP8, then H.264 (and RTX) first for video, Opus for audio; drop the rest.
 * @param {RTCRtpTransceiver} transceiver
 * @param {string} kind  'audio' or 'video'
 */
export function preferCodecs(transceiver, kind) {
  // The SFU forwards without transcoding and understands VP8/H.264 video and Opus.
  if (!window.RTCRtpSender || !RTCRtpSender.getCapabilities || !transceiver.setCodecPreferences) {
    return;
  }
  const caps = RTCRtpSender.getCapabilities(kind);
  if (!caps) return;
  const rank = (codec) => {
    const mime = codec.mimeType.toLowerCase();
    if (kind === 'video') {
      if (mime === 'video/vp8') return 0;
      if (mime === 'video/h264') return 1;
      if (mime === 'video/rtx') return 2;
      return 9;
    }
    return mime === 'audio/opus' ? 0 : 9;
  };
  const codecs = caps.codecs.filter((c) => rank(c) < 9).sort((a, b) => rank(a) - rank(b));
  try {
    transceiver.setCodecPreferences(codecs);
  } catch (err) {
    /* keep the browser's defaults */
  }
}
