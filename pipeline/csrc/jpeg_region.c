/*
 * Region decode of JPEG records through libjpeg-turbo's libjpeg 6.2 API, and the lossless
 * re-write of a JPEG with restart markers that makes its tiles decodable on their own
 * (jr_add_restart_markers, used by `deit-pipe shard`).
 *
 * Why by hand: the maintained Rust bindings cannot be built on a fresh machine of ours.
 * `turbojpeg` needs the TurboJPEG 3 API (libjpeg-turbo 3, built with cmake and nasm) and
 * `mozjpeg-sys` without nasm has no SIMD. The system's libjpeg-turbo 2.1
 * (libjpeg62-turbo-dev: jpeglib.h, libjpeg.a, with SIMD) already has everything a region
 * decode needs (jpeg_crop_scanline, jpeg_skip_scanlines), so this file is the whole
 * binding: one plain function called from pipeline/src/ingest/jpeg.rs.
 *
 * Settings are Pillow's: JDCT_ISLOW, fancy upsampling, warnings ignored (corrupt-data
 * warnings still give pixels, as in Pillow). Errors never exit(): they longjmp back
 * here and return JR_ERROR with libjpeg's message text.
 */
#include <setjmp.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jpeglib.h>
#include <jerror.h>

#define JR_OK 0
#define JR_ERROR 1
#define JR_UNSUPPORTED 2
#define JR_BAD_ARGS 3

typedef struct {
  struct jpeg_error_mgr pub;
  jmp_buf jump;
  char *msg;
  size_t msg_cap;
} jr_error_mgr;

static void jr_set_msg(jr_error_mgr *e, const char *text) {
  if (e->msg != NULL && e->msg_cap > 0) {
    strncpy(e->msg, text, e->msg_cap - 1);
    e->msg[e->msg_cap - 1] = '\0';
  }
}

static void jr_error_exit(j_common_ptr cinfo) {
  jr_error_mgr *e = (jr_error_mgr *)cinfo->err;
  char buf[JMSG_LENGTH_MAX];
  (*cinfo->err->format_message)(cinfo, buf);
  jr_set_msg(e, buf);
  longjmp(e->jump, 1);
}

/* Warnings (level -1) and trace messages are ignored, as Pillow does. */
static void jr_emit_message(j_common_ptr cinfo, int msg_level) {
  (void)cinfo;
  (void)msg_level;
}

static void jr_output_message(j_common_ptr cinfo) { (void)cinfo; }

/* 4-component CMYK or YCCK (libjpeg converts YCCK to CMYK). */
static int jr_is_cmyk(const struct jpeg_decompress_struct *c) {
  return c->num_components == 4 &&
         (c->jpeg_color_space == JCS_CMYK || c->jpeg_color_space == JCS_YCCK);
}

/* Colour spaces decoded here: 1-component grayscale, 3-component YCbCr or RGB, CMYK. */
static int jr_supported(const struct jpeg_decompress_struct *c) {
  return (c->num_components == 1 && c->jpeg_color_space == JCS_GRAYSCALE) ||
         (c->num_components == 3 &&
          (c->jpeg_color_space == JCS_YCbCr || c->jpeg_color_space == JCS_RGB)) ||
         jr_is_cmyk(c);
}

/*
 * n CMYK pixels as libjpeg outputs them to RGB, as Pillow does it: Pillow reads every
 * 4-component JPEG with the "CMYK;I" raw mode (all four samples inverted, "assume adobe
 * conventions", JpegImagePlugin.py), then convert("RGB") runs cmyk2rgb (Convert.c):
 * nk = 255 - K', channel = clip(nk - MULDIV255(C', nk)), with C' = 255 - C, K' = 255 - K
 * and MULDIV255(a, b) = ((a*b + 128) >> 8 + a*b + 128) >> 8.
 */
static void jr_cmyk_to_rgb(const JSAMPLE *in, unsigned char *out, unsigned n) {
  unsigned i, ch;
  for (i = 0; i < n; i++, in += 4, out += 3) {
    int nk = in[3]; /* 255 - K' = K */
    for (ch = 0; ch < 3; ch++) {
      int t = (255 - (int)in[ch]) * nk + 128;
      int v = nk - (((t >> 8) + t) >> 8);
      out[ch] = (unsigned char)(v < 0 ? 0 : (v > 255 ? 255 : v));
    }
  }
}

static void jr_init(struct jpeg_decompress_struct *c, jr_error_mgr *e, char *msg,
                    size_t msg_cap) {
  memset(e, 0, sizeof(*e));
  c->err = jpeg_std_error(&e->pub);
  e->pub.error_exit = jr_error_exit;
  e->pub.emit_message = jr_emit_message;
  e->pub.output_message = jr_output_message;
  e->msg = msg;
  e->msg_cap = msg_cap;
  if (msg != NULL && msg_cap > 0) msg[0] = '\0';
}

/*
 * Decodes the rectangle (x, y, w, h) of a JPEG of expected size exp_w x exp_h into `out`
 * (w * h * 3 bytes, RGB, rows packed). The pixels equal those of a full decode cropped
 * afterwards: columns come from jpeg_crop_scanline (widened to an iMCU boundary, and by
 * max_h_samp_factor more pixels each side, one chroma sample, so the fancy upsampler's
 * edge replication stays outside the wanted columns; without this margin the test
 * region_decode_equals_full_decode_cropped fails on 4:2:0), rows above are skipped with
 * jpeg_skip_scanlines, and reading stops at the last wanted row (jpeg_abort_decompress).
 * A size other than the expected one is an error (reported with the header's size in
 * *img_w, *img_h). CMYK and YCCK files decode to CMYK and convert to RGB as Pillow does
 * (jr_cmyk_to_rgb). Returns JR_UNSUPPORTED for other colour spaces.
 *
 * `out` has room for out_cap bytes (at least w * h * 3). With `wide` set, the decoded
 * columns may be kept as they come from jpeg_crop_scanline (a wider band, iMCU-aligned,
 * with the margin) instead of being copied out, when they fit in out_cap: rows are then
 * packed at that width. *out_x, *out_w give the columns written (x, w when not widened).
 */
int jr_decode_region(const unsigned char *data, unsigned long len, unsigned exp_w,
                     unsigned exp_h, unsigned x, unsigned y, unsigned w, unsigned h,
                     unsigned char *out, unsigned long out_cap, int wide, unsigned *out_x,
                     unsigned *out_w, unsigned *img_w, unsigned *img_h, char *msg,
                     size_t msg_cap) {
  struct jpeg_decompress_struct c;
  jr_error_mgr e;
  JSAMPARRAY rows16;
  JDIMENSION xoff, cw, skip_to, done;
  unsigned long line;
  unsigned dx, margin, cmyk, bpp, row_w;
  jr_init(&c, &e, msg, msg_cap);
  if (setjmp(e.jump)) {
    jpeg_destroy_decompress(&c);
    return JR_ERROR;
  }
  jpeg_create_decompress(&c);
  jpeg_mem_src(&c, data, len);
  jpeg_read_header(&c, TRUE);
  *img_w = c.image_width;
  *img_h = c.image_height;
  if (c.image_width != exp_w || c.image_height != exp_h) {
    jr_set_msg(&e, "size differs from the expected size");
    jpeg_destroy_decompress(&c);
    return JR_BAD_ARGS;
  }
  if (w == 0 || h == 0 || x > exp_w || w > exp_w - x || y > exp_h || h > exp_h - y ||
      (unsigned long)w * h * 3 > out_cap) {
    jr_set_msg(&e, "region outside the image");
    jpeg_destroy_decompress(&c);
    return JR_BAD_ARGS;
  }
  if (!jr_supported(&c)) {
    jpeg_destroy_decompress(&c);
    return JR_UNSUPPORTED;
  }
  margin = (unsigned)c.max_h_samp_factor;
  cmyk = (unsigned)jr_is_cmyk(&c);
  bpp = cmyk ? 4 : 3;
  c.out_color_space = cmyk ? JCS_CMYK : JCS_RGB;
  c.dct_method = JDCT_ISLOW;
  c.do_fancy_upsampling = TRUE;
  jpeg_start_decompress(&c);
  /* Columns: [xoff, xoff + cw) holds [x - margin, x + w + margin) clipped to the image. */
  xoff = x > margin ? x - margin : 0;
  cw = (x + w + margin < c.output_width ? x + w + margin : c.output_width) - xoff;
  if (xoff > 0 || cw < c.output_width) jpeg_crop_scanline(&c, &xoff, &cw);
  dx = x - xoff;
  rows16 = (*c.mem->alloc_sarray)((j_common_ptr)&c, JPOOL_IMAGE,
                                  (JDIMENSION)(c.output_width * bpp), 16);
  skip_to = y;
  done = 0;
  while (done < skip_to) {
    JDIMENSION n = jpeg_skip_scanlines(&c, skip_to - done);
    if (n == 0) break;
    done += n;
  }
  while (c.output_scanline < skip_to)
    if (jpeg_read_scanlines(&c, rows16, 1) == 0) break;
  *out_x = x;
  *out_w = w;
  if (!cmyk && wide && (unsigned long)c.output_width * 3 * h <= out_cap) {
    /* The caller takes the decoded band as it is: no copy. */
    *out_x = xoff;
    *out_w = c.output_width;
    dx = 0;
  }
  row_w = *out_w;
  if (!cmyk && dx == 0 && c.output_width == row_w) {
    /* Whole decoded rows are wanted: decode straight into `out`, a few rows a call. */
    JSAMPROW rows[16];
    line = 0;
    while (line < h) {
      JDIMENSION k, n = h - line < 16 ? (JDIMENSION)(h - line) : 16, got;
      for (k = 0; k < n; k++) rows[k] = out + (line + k) * (unsigned long)row_w * 3;
      got = jpeg_read_scanlines(&c, rows, n);
      if (got == 0) {
        jr_set_msg(&e, "decoder returned no scanline");
        jpeg_destroy_decompress(&c);
        return JR_ERROR;
      }
      line += got;
    }
  } else {
    /* Decode a few widened rows a call, copy out the wanted columns. */
    line = 0;
    while (line < h) {
      JDIMENSION k, n = h - line < 16 ? (JDIMENSION)(h - line) : 16, got;
      got = jpeg_read_scanlines(&c, rows16, n);
      if (got == 0) {
        jr_set_msg(&e, "decoder returned no scanline");
        jpeg_destroy_decompress(&c);
        return JR_ERROR;
      }
      for (k = 0; k < got; k++) {
        unsigned char *dst = out + (line + k) * (unsigned long)w * 3;
        if (cmyk)
          jr_cmyk_to_rgb(rows16[k] + (unsigned long)dx * 4, dst, w);
        else
          memcpy(dst, rows16[k] + (unsigned long)dx * 3, (size_t)w * 3);
      }
      line += got;
    }
  }
  jpeg_abort_decompress(&c);
  jpeg_destroy_decompress(&c);
  return JR_OK;
}

/* A destination manager that appends into one growing malloc'd buffer this file owns, so
 * an error (longjmp) can free it; libjpeg's jpeg_mem_dest frees and replaces its buffer
 * internally and only reports it at the end. */
typedef struct {
  struct jpeg_destination_mgr pub;
  unsigned char *buf;
  size_t cap;
  int oom;
} jr_dest_mgr;

#define JR_DEST_CHUNK 65536

static void jr_dest_init(j_compress_ptr c) {
  jr_dest_mgr *d = (jr_dest_mgr *)c->dest;
  d->pub.next_output_byte = d->buf;
  d->pub.free_in_buffer = d->cap;
}

static boolean jr_dest_grow(j_compress_ptr c) {
  jr_dest_mgr *d = (jr_dest_mgr *)c->dest;
  size_t used = d->cap; /* empty_output_buffer: the whole buffer is full */
  size_t cap = d->cap * 2;
  unsigned char *nb = (unsigned char *)realloc(d->buf, cap);
  if (nb == NULL) {
    d->oom = 1;
    ERREXIT1(c, JERR_OUT_OF_MEMORY, 10);
  }
  d->buf = nb;
  d->cap = cap;
  d->pub.next_output_byte = nb + used;
  d->pub.free_in_buffer = cap - used;
  return TRUE;
}

static void jr_dest_term(j_compress_ptr c) { (void)c; }

/* Largest divisor of n that is at most target (at least 1). */
static unsigned jr_divisor_at_most(unsigned n, unsigned target) {
  unsigned r;
  if (target == 0) target = 1;
  for (r = target < n ? target : n; r > 1; r--)
    if (n % r == 0) return r;
  return 1;
}

/*
 * Re-writes the JPEG in `data` losslessly (the same quantized DCT coefficients, so every
 * decoder gives the same pixels) as a sequential Huffman JPEG with the standard tables and
 * a restart marker every R MCUs, R the largest divisor of the MCUs per row that is at most
 * `target_mcus`: each restart interval then covers whole MCUs of one MCU row and can be
 * cut out and decoded without the rest of the image (pipeline/src/ingest/jpeg_tiles.rs).
 * Only the frame and its colour-space marker (JFIF or Adobe) are written; other APPn and
 * COM segments (EXIF, ICC, comments) are dropped: nothing in the pixels depends on them.
 * On success *out (malloc'd, free with jr_free) holds *out_len bytes and *interval is R.
 */
int jr_add_restart_markers(const unsigned char *data, unsigned long len, unsigned target_mcus,
                           unsigned char **out, unsigned long *out_len, unsigned *interval,
                           char *msg, size_t msg_cap) {
  struct jpeg_decompress_struct d;
  struct jpeg_compress_struct c;
  jr_error_mgr e;
  jr_dest_mgr dest;
  jvirt_barray_ptr *coefs;
  unsigned mcus_per_row, mcu_px;
  volatile int have_c = 0;
  *out = NULL;
  *out_len = 0;
  *interval = 0;
  memset(&dest, 0, sizeof(dest));
  jr_init(&d, &e, msg, msg_cap);
  if (setjmp(e.jump)) {
    if (have_c) jpeg_destroy_compress(&c);
    jpeg_destroy_decompress(&d);
    free(dest.buf);
    return JR_ERROR;
  }
  jpeg_create_decompress(&d);
  jpeg_mem_src(&d, data, len);
  jpeg_read_header(&d, TRUE);
  coefs = jpeg_read_coefficients(&d);
  c.err = d.err;
  jpeg_create_compress(&c);
  have_c = 1;
  jpeg_copy_critical_parameters(&d, &c);
  /* One component: a non-interleaved scan, one 8x8 block per MCU. */
  mcu_px = d.num_components == 1 ? 8 : 8 * (unsigned)d.max_h_samp_factor;
  mcus_per_row = (d.image_width + mcu_px - 1) / mcu_px;
  c.restart_interval = jr_divisor_at_most(mcus_per_row, target_mcus);
  /* The standard tables (complete for every symbol), not optimized ones: the optimizing
   * pass (encode_mcu_gather, no SIMD) took 3x the time of the rest of `shard`, for 2%. */
  c.optimize_coding = FALSE;
  dest.cap = JR_DEST_CHUNK;
  dest.buf = (unsigned char *)malloc(dest.cap);
  if (dest.buf == NULL) {
    jr_set_msg(&e, "out of memory");
    jpeg_destroy_compress(&c);
    jpeg_destroy_decompress(&d);
    return JR_ERROR;
  }
  dest.pub.init_destination = jr_dest_init;
  dest.pub.empty_output_buffer = jr_dest_grow;
  dest.pub.term_destination = jr_dest_term;
  c.dest = &dest.pub;
  jpeg_write_coefficients(&c, coefs);
  jpeg_finish_compress(&c);
  *out_len = (unsigned long)(dest.cap - dest.pub.free_in_buffer);
  *interval = c.restart_interval;
  jpeg_destroy_compress(&c);
  jpeg_finish_decompress(&d);
  jpeg_destroy_decompress(&d);
  *out = dest.buf;
  return JR_OK;
}

/* Frees a buffer returned by jr_add_restart_markers. */
void jr_free(unsigned char *p) { free(p); }
