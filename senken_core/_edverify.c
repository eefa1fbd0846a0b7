/* Ed25519 signature verification with per-key precomputation: the validator's hot path.

   A validator checks thousands of readings signed by the same device key. libsodium's
   crypto_sign_verify_detached decodes the key and builds its small table of multiples again for
   every signature, and computes R' = s*B - h*A with ~253 point doublings. Here each key is
   decoded and checked once, and both B and -A get tables of odd multiples of
   P_j = 2^(32j) * P (j = 0..7): the 256-bit scalars are cut into eight 32-bit pieces that share
   one loop of 31 doublings (a comb of Straus' trick), so a verification costs ~31 doublings and
   ~80 additions instead of ~253 and ~86, and no square root for the key. verify_many checks a
   batch of one key's signatures with one field inversion for all their final encodings
   (Montgomery's trick) instead of one each.

   The answer is libsodium's, bit for bit (docs/protocol.md, section 3, "Which signatures
   verify"):
     - only keys that crypto_core_ed25519_is_valid_point accepts (canonical, on the curve, not of
       small order, in the prime-order subgroup: every honest key) take this path; any other key
       goes to crypto_sign_verify_detached itself;
     - S must be canonical (S < L); R must not be of small order: for a key in the prime-order
       subgroup, s*B - h*A is in that subgroup, whose only small-order point is the identity, so
       R is refused if it is the identity's encoding and otherwise must equal the canonical
       encoding of s*B - h*A, as in libsodium;
     - h = SHA-512(R || A || M) reduced mod L by libsodium's own functions;
     - a signature this code refuses is checked again by crypto_sign_verify_detached, so an
       error here can never refuse a valid signature (tests compare both on valid, tampered,
       non-canonical, small-order and mixed-order inputs).
   Field arithmetic: GF(2^255 - 19) in five 51-bit limbs; twisted Edwards a = -1 in extended
   coordinates (Hisil-Wong-Carter-Dawson 2008), additions with precomputed points in affine
   (y + x, y - x, 2dxy) form. Variable time: everything here is public. */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

typedef unsigned __int128 u128;
typedef uint64_t fe[5];

#define MASK51 ((((uint64_t)1) << 51) - 1)

/* ---- GF(p) ---- */

static inline uint64_t load64(const unsigned char *s) {
    uint64_t r;
    memcpy(&r, s, 8); /* little-endian machines (x86-64, aarch64); checked at init */
    return r;
}

static void fe_frombytes(fe h, const unsigned char s[32]) {
    h[0] = load64(s) & MASK51;
    h[1] = (load64(s + 6) >> 3) & MASK51;
    h[2] = (load64(s + 12) >> 6) & MASK51;
    h[3] = (load64(s + 19) >> 1) & MASK51;
    h[4] = (load64(s + 24) >> 12) & MASK51; /* bit 255 ignored */
}

static inline void fe_carry(fe h) {
    uint64_t c;
    c = h[0] >> 51; h[0] &= MASK51; h[1] += c;
    c = h[1] >> 51; h[1] &= MASK51; h[2] += c;
    c = h[2] >> 51; h[2] &= MASK51; h[3] += c;
    c = h[3] >> 51; h[3] &= MASK51; h[4] += c;
    c = h[4] >> 51; h[4] &= MASK51; h[0] += 19 * c;
}

/* the unique representative in [0, p), as 32 little-endian bytes */
static void fe_tobytes(unsigned char s[32], const fe f) {
    uint64_t t[5], q;
    memcpy(t, f, sizeof t);
    fe_carry(t);
    fe_carry(t); /* now t < 2^255 + small, every limb < 2^51 but t[0] < 2^51 + 19 */
    q = (t[0] + 19) >> 51;
    q = (t[1] + q) >> 51;
    q = (t[2] + q) >> 51;
    q = (t[3] + q) >> 51;
    q = (t[4] + q) >> 51; /* 1 iff t >= p */
    t[0] += 19 * q;
    t[1] += t[0] >> 51; t[0] &= MASK51;
    t[2] += t[1] >> 51; t[1] &= MASK51;
    t[3] += t[2] >> 51; t[2] &= MASK51;
    t[4] += t[3] >> 51; t[3] &= MASK51;
    t[4] &= MASK51; /* drops 2^255: t - p */
    uint64_t w0 = t[0] | (t[1] << 51);
    uint64_t w1 = (t[1] >> 13) | (t[2] << 38);
    uint64_t w2 = (t[2] >> 26) | (t[3] << 25);
    uint64_t w3 = (t[3] >> 39) | (t[4] << 12);
    memcpy(s, &w0, 8); memcpy(s + 8, &w1, 8); memcpy(s + 16, &w2, 8); memcpy(s + 24, &w3, 8);
}

static inline void fe_copy(fe h, const fe f) { memcpy(h, f, sizeof(fe)); }

static inline void fe_add(fe h, const fe f, const fe g) {
    for (int i = 0; i < 5; i++) h[i] = f[i] + g[i];
    fe_carry(h);
}

/* f - g + 2p: inputs carried (limbs < 2^52), so no limb goes negative */
static inline void fe_sub(fe h, const fe f, const fe g) {
    h[0] = f[0] + 0xFFFFFFFFFFFDAULL - g[0];
    h[1] = f[1] + 0xFFFFFFFFFFFFEULL - g[1];
    h[2] = f[2] + 0xFFFFFFFFFFFFEULL - g[2];
    h[3] = f[3] + 0xFFFFFFFFFFFFEULL - g[3];
    h[4] = f[4] + 0xFFFFFFFFFFFFEULL - g[4];
    fe_carry(h);
}

static inline void fe_neg(fe h, const fe f) {
    static const fe zero = {0, 0, 0, 0, 0};
    fe_sub(h, zero, f);
}

static inline void fe_reduce128(fe h, u128 r0, u128 r1, u128 r2, u128 r3, u128 r4) {
    uint64_t c;
    r1 += (uint64_t)(r0 >> 51); h[0] = (uint64_t)r0 & MASK51;
    r2 += (uint64_t)(r1 >> 51); h[1] = (uint64_t)r1 & MASK51;
    r3 += (uint64_t)(r2 >> 51); h[2] = (uint64_t)r2 & MASK51;
    r4 += (uint64_t)(r3 >> 51); h[3] = (uint64_t)r3 & MASK51;
    c = (uint64_t)(r4 >> 51); h[4] = (uint64_t)r4 & MASK51;
    h[0] += c * 19;
    h[1] += h[0] >> 51; h[0] &= MASK51;
}

static void fe_mul(fe h, const fe f, const fe g) {
    uint64_t g1 = 19 * g[1], g2 = 19 * g[2], g3 = 19 * g[3], g4 = 19 * g[4];
    u128 r0 = (u128)f[0] * g[0] + (u128)f[1] * g4 + (u128)f[2] * g3 + (u128)f[3] * g2 +
              (u128)f[4] * g1;
    u128 r1 = (u128)f[0] * g[1] + (u128)f[1] * g[0] + (u128)f[2] * g4 + (u128)f[3] * g3 +
              (u128)f[4] * g2;
    u128 r2 = (u128)f[0] * g[2] + (u128)f[1] * g[1] + (u128)f[2] * g[0] + (u128)f[3] * g4 +
              (u128)f[4] * g3;
    u128 r3 = (u128)f[0] * g[3] + (u128)f[1] * g[2] + (u128)f[2] * g[1] + (u128)f[3] * g[0] +
              (u128)f[4] * g4;
    u128 r4 = (u128)f[0] * g[4] + (u128)f[1] * g[3] + (u128)f[2] * g[2] + (u128)f[3] * g[1] +
              (u128)f[4] * g[0];
    fe_reduce128(h, r0, r1, r2, r3, r4);
}

static void fe_sq(fe h, const fe f) {
    uint64_t d0 = 2 * f[0], d1 = 2 * f[1], d2 = 2 * f[2];
    uint64_t f3_19 = 19 * f[3], f4_19 = 19 * f[4];
    u128 r0 = (u128)f[0] * f[0] + (u128)d1 * f4_19 + (u128)d2 * f3_19;
    u128 r1 = (u128)d0 * f[1] + (u128)d2 * f4_19 + (u128)f[3] * f3_19;
    u128 r2 = (u128)d0 * f[2] + (u128)f[1] * f[1] + (u128)(2 * f[3]) * f4_19;
    u128 r3 = (u128)d0 * f[3] + (u128)d1 * f[2] + (u128)f[4] * f4_19;
    u128 r4 = (u128)d0 * f[4] + (u128)d1 * f[3] + (u128)f[2] * f[2];
    fe_reduce128(h, r0, r1, r2, r3, r4);
}

static void fe_sqn(fe h, const fe f, int n) {
    fe_sq(h, f);
    for (int i = 1; i < n; i++) fe_sq(h, h);
}

/* out = run^(2^n) * low: with run = z^(2^a - 1) and low = z^(2^n - 1), z^(2^(a+n) - 1) */
static void fe_extend(fe out, const fe run, int n, const fe low) {
    fe t;
    fe_sqn(t, run, n);
    fe_mul(out, t, low);
}

/* z^(2^250 - 1) and z^11: the common part of inversion and the square root exponent */
static void fe_pow_2_250_1(fe z250, fe z11, const fe z) {
    fe z2, z9, t, z5, z10, z20, z40, z50, z100, z200;
    fe_sq(z2, z);                  /* 2 */
    fe_sqn(t, z2, 2);              /* 8 */
    fe_mul(z9, t, z);              /* 9 */
    fe_mul(z11, z9, z2);           /* 11 */
    fe_sq(t, z11);                 /* 22 */
    fe_mul(z5, t, z9);             /* 2^5 - 1 */
    fe_extend(z10, z5, 5, z5);     /* 2^10 - 1 */
    fe_extend(z20, z10, 10, z10);  /* 2^20 - 1 */
    fe_extend(z40, z20, 20, z20);  /* 2^40 - 1 */
    fe_extend(z50, z40, 10, z10);  /* 2^50 - 1 */
    fe_extend(z100, z50, 50, z50); /* 2^100 - 1 */
    fe_extend(z200, z100, 100, z100); /* 2^200 - 1 */
    fe_extend(z250, z200, 50, z50);   /* 2^250 - 1 */
}

static void fe_invert(fe h, const fe z) { /* z^(p - 2) = z^(2^255 - 21) */
    fe z250, z11;
    fe_pow_2_250_1(z250, z11, z);
    fe_sqn(z250, z250, 5);
    fe_mul(h, z250, z11);
}

static void fe_pow22523(fe h, const fe z) { /* z^((p - 5) / 8) = z^(2^252 - 3) */
    fe z250, z11;
    fe_pow_2_250_1(z250, z11, z);
    fe_sqn(z250, z250, 2);
    fe_mul(h, z250, z);
}

static int fe_iszero(const fe f) {
    unsigned char s[32], acc = 0;
    fe_tobytes(s, f);
    for (int i = 0; i < 32; i++) acc |= s[i];
    return acc == 0;
}

static int fe_isodd(const fe f) {
    unsigned char s[32];
    fe_tobytes(s, f);
    return s[0] & 1;
}

/* ---- the curve: -x^2 + y^2 = 1 + d x^2 y^2 ---- */

static const unsigned char D_BYTES[32] = {
    0xa3, 0x78, 0x59, 0x13, 0xca, 0x4d, 0xeb, 0x75, 0xab, 0xd8, 0x41, 0x41, 0x4d, 0x0a, 0x70, 0x00,
    0x98, 0xe8, 0x79, 0x77, 0x79, 0x40, 0xc7, 0x8c, 0x73, 0xfe, 0x6f, 0x2b, 0xee, 0x6c, 0x03, 0x52};
static const unsigned char SQRTM1_BYTES[32] = {
    0xb0, 0xa0, 0x0e, 0x4a, 0x27, 0x1b, 0xee, 0xc4, 0x78, 0xe4, 0x2f, 0xad, 0x06, 0x18, 0x43, 0x2f,
    0xa7, 0xd7, 0xfb, 0x3d, 0x99, 0x00, 0x4d, 0x2b, 0x0b, 0xdf, 0xc1, 0x4f, 0x80, 0x24, 0x83, 0x2b};
static const unsigned char L_BYTES[32] = { /* the group order, 2^252 + 2774...8493 */
    0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9, 0xde, 0x14,
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x10};
static const unsigned char B_BYTES[32] = { /* the base point: y = 4/5, x even */
    0x58, 0x66, 0x66, 0x66, 0x66, 0x66, 0x66, 0x66, 0x66, 0x66, 0x66, 0x66, 0x66, 0x66, 0x66, 0x66,
    0x66, 0x66, 0x66, 0x66, 0x66, 0x66, 0x66, 0x66, 0x66, 0x66, 0x66, 0x66, 0x66, 0x66, 0x66, 0x66};

static fe D, D2, SQRTM1;

typedef struct { fe X, Y, Z, T; } ge; /* extended: x = X/Z, y = Y/Z, T = XY/Z */
typedef struct { fe ypx, ymx, xy2d; } niels; /* affine: y + x, y - x, 2dxy */

static void ge_identity(ge *p) {
    memset(p, 0, sizeof *p);
    p->Y[0] = 1;
    p->Z[0] = 1;
}

/* decode a point's 32 bytes (y, and the sign of x in bit 255); 0 if no point has them */
static int ge_frombytes(ge *p, const unsigned char s[32]) {
    fe u, v, v3, vxx, check, x;
    fe_frombytes(p->Y, s);
    memset(p->Z, 0, sizeof(fe));
    p->Z[0] = 1;
    fe_sq(u, p->Y);
    fe_mul(v, u, D);
    fe_sub(u, u, p->Z); /* u = y^2 - 1 */
    fe_add(v, v, p->Z); /* v = d y^2 + 1 */
    fe_sq(v3, v);
    fe_mul(v3, v3, v); /* v^3 */
    fe_sq(x, v3);
    fe_mul(x, x, v);
    fe_mul(x, x, u); /* u v^7 */
    fe_pow22523(x, x);
    fe_mul(x, x, v3);
    fe_mul(x, x, u); /* x = u v^3 (u v^7)^((p-5)/8) */
    fe_sq(vxx, x);
    fe_mul(vxx, vxx, v);
    fe_sub(check, vxx, u);
    if (!fe_iszero(check)) {
        fe_add(check, vxx, u);
        if (!fe_iszero(check)) return 0;
        fe_mul(x, x, SQRTM1);
    }
    if (fe_isodd(x) != (s[31] >> 7)) fe_neg(x, x);
    fe_copy(p->X, x);
    fe_mul(p->T, p->X, p->Y);
    return 1;
}

static void ge_tobytes(unsigned char s[32], const ge *p) {
    fe zi, x, y;
    fe_invert(zi, p->Z);
    fe_mul(x, p->X, zi);
    fe_mul(y, p->Y, zi);
    fe_tobytes(s, y);
    s[31] ^= (unsigned char)(fe_isodd(x) << 7);
}

/* the last step of the extended-coordinates formulas: X = EF, Y = GH, T = EH, Z = FG */
static inline void ge_from_efgh(ge *r, const fe e, const fe f, const fe g, const fe h) {
    fe_mul(r->X, e, f);
    fe_mul(r->Y, g, h);
    fe_mul(r->T, e, h);
    fe_mul(r->Z, f, g);
}

static void ge_dbl(ge *r, const ge *p) {
    fe a, b, c, e, g, f, h, t;
    fe_sq(a, p->X);
    fe_sq(b, p->Y);
    fe_sq(c, p->Z);
    fe_add(c, c, c);        /* C = 2 Z^2 */
    fe_add(t, p->X, p->Y);
    fe_sq(e, t);
    fe_sub(e, e, a);
    fe_sub(e, e, b);        /* E = (X + Y)^2 - A - B = 2XY */
    fe_sub(g, b, a);        /* G = -A + B */
    fe_sub(f, g, c);        /* F = G - C */
    fe_add(h, a, b);
    fe_neg(h, h);           /* H = -A - B */
    ge_from_efgh(r, e, f, g, h);
}

/* r = p + q (sign = +1) or p - q (sign = -1), q affine */
static void ge_madd(ge *r, const ge *p, const niels *q, int sign) {
    fe a, b, c, d, e, f, g, h, t;
    fe_sub(t, p->Y, p->X);
    fe_mul(a, t, sign > 0 ? q->ymx : q->ypx);
    fe_add(t, p->Y, p->X);
    fe_mul(b, t, sign > 0 ? q->ypx : q->ymx);
    fe_mul(c, p->T, q->xy2d);
    fe_add(d, p->Z, p->Z);
    fe_sub(e, b, a);
    if (sign > 0) {
        fe_sub(f, d, c);
        fe_add(g, d, c);
    } else {
        fe_add(f, d, c);
        fe_sub(g, d, c);
    }
    fe_add(h, b, a);
    ge_from_efgh(r, e, f, g, h);
}

/* full addition of two extended points (only used to build tables) */
static void ge_add(ge *r, const ge *p, const ge *q) {
    fe a, b, c, d, e, f, g, h, t, u;
    fe_sub(t, p->Y, p->X);
    fe_sub(u, q->Y, q->X);
    fe_mul(a, t, u);
    fe_add(t, p->Y, p->X);
    fe_add(u, q->Y, q->X);
    fe_mul(b, t, u);
    fe_mul(c, p->T, q->T);
    fe_mul(c, c, D2);
    fe_mul(d, p->Z, q->Z);
    fe_add(d, d, d);
    fe_sub(e, b, a);
    fe_sub(f, d, c);
    fe_add(g, d, c);
    fe_add(h, b, a);
    ge_from_efgh(r, e, f, g, h);
}

static void ge_to_niels(niels *n, const ge *p) {
    fe zi, x, y;
    fe_invert(zi, p->Z);
    fe_mul(x, p->X, zi);
    fe_mul(y, p->Y, zi);
    fe_add(n->ypx, y, x);
    fe_sub(n->ymx, y, x);
    fe_mul(n->xy2d, x, y);
    fe_mul(n->xy2d, n->xy2d, D2);
}

/* ---- the comb: eight 32-bit pieces, odd multiples of P_j = 2^(32j) P ---- */

#define PIECES 8
#define PIECE_BITS 32
#define A_WIDTH 5 /* per key: 8 odd multiples per piece, 7,680 bytes */
#define B_WIDTH 6 /* the base point: 16 per piece, 15,360 bytes */
#define A_ODD (1 << (A_WIDTH - 2))
#define B_ODD (1 << (B_WIDTH - 2))

typedef struct { niels t[PIECES][A_ODD]; } key_table;

static niels B_TABLE[PIECES][B_ODD];
static int tables_built = 0;

/* odd multiples P_j, 3 P_j, ... of P_j = 2^(32j) p, for j < PIECES, into out[j][0..count) */
static void build_table(niels *out, int count, const ge *p) {
    ge pj = *p, twice, acc;
    for (int j = 0; j < PIECES; j++) {
        if (j > 0)
            for (int i = 0; i < PIECE_BITS; i++) ge_dbl(&pj, &pj);
        ge_dbl(&twice, &pj);
        acc = pj;
        for (int i = 0; i < count; i++) {
            ge_to_niels(&out[j * count + i], &acc);
            ge_add(&acc, &acc, &twice);
        }
    }
}

/* width-w non-adjacent form of a scalar below 2^255: naf[i] in {0, +-1, +-3, ..., +-(2^(w-1)-1)} */
static void wnaf(signed char naf[256], const unsigned char s[32], int w) {
    uint64_t x[5];
    for (int i = 0; i < 4; i++) x[i] = load64(s + 8 * i);
    x[4] = 0;
    memset(naf, 0, 256);
    const uint64_t width = (uint64_t)1 << w, mask = width - 1;
    uint64_t carry = 0;
    int pos = 0;
    while (pos < 256) {
        int idx = pos / 64, bit = pos % 64;
        uint64_t buf = bit < 64 - w ? x[idx] >> bit
                                    : (x[idx] >> bit) | (x[idx + 1] << (64 - bit));
        uint64_t window = carry + (buf & mask);
        if ((window & 1) == 0) {
            pos += 1;
            continue;
        }
        if (window < width / 2) {
            carry = 0;
            naf[pos] = (signed char)window;
        } else {
            carry = 1;
            naf[pos] = (signed char)((int64_t)window - (int64_t)width);
        }
        pos += w;
    }
}

/* r = s B + h (-A): -A's table in `neg_a` */
static void double_scalarmult(ge *r, const unsigned char s[32], const unsigned char h[32],
                              const key_table *neg_a) {
    signed char ns[256], nh[256];
    wnaf(ns, s, B_WIDTH);
    wnaf(nh, h, A_WIDTH);
    ge_identity(r);
    int started = 0;
    for (int t = PIECE_BITS - 1; t >= 0; t--) {
        if (started) ge_dbl(r, r);
        for (int j = 0; j < PIECES; j++) {
            int ds = ns[PIECE_BITS * j + t], dh = nh[PIECE_BITS * j + t];
            if (ds) {
                ge_madd(r, r, &B_TABLE[j][(ds > 0 ? ds : -ds) >> 1], ds > 0 ? 1 : -1);
                started = 1;
            }
            if (dh) {
                ge_madd(r, r, &neg_a->t[j][(dh > 0 ? dh : -dh) >> 1], dh > 0 ? 1 : -1);
                started = 1;
            }
        }
    }
}

/* ---- libsodium, bound once (the copy PyNaCl ships, as _batchsign does) ---- */

typedef int (*sha256_fn)(unsigned char *out, const unsigned char *in, unsigned long long len);
typedef int (*sha512_fn)(unsigned char *out, const unsigned char *in, unsigned long long len);
typedef void (*reduce_fn)(unsigned char *r, const unsigned char *s);
typedef int (*valid_point_fn)(const unsigned char *p);
typedef int (*verify_fn)(const unsigned char *sig, const unsigned char *m,
                         unsigned long long mlen, const unsigned char *pk);

static sha256_fn p_sha256 = NULL;
static sha512_fn p_sha512 = NULL;
static reduce_fn p_reduce = NULL;
static valid_point_fn p_valid_point = NULL;
static verify_fn p_verify = NULL;

/* ---- prepared keys: a direct-mapped cache of -A's table by key ----
   Preparing a key costs about ten verifications (the subgroup check, 64 table entries with an
   inversion each) and saves more than half of each later one; a key earns a slot (evicting the
   slot's key) once it has been verified ADMIT times since it last lost one, so that a validator
   with more devices than slots, each sending a reading now and then, does not rebuild tables
   for keys it then uses once: at worst it spends ~1/ADMIT of a preparation per verification. */

#define SLOTS 2048 /* 7.7 KB each when used: at most ~16 MB */
#define COUNTERS 16384
#define ADMIT 32
typedef struct {
    unsigned char pk[32];
    int usable; /* 1: table below; 0: verify this key with libsodium */
    key_table table;
} slot;

static slot *cache[SLOTS];
static unsigned char uses[COUNTERS]; /* verifications since a key last lost its slot, by hash */
static Py_ssize_t prepared_keys = 0, libsodium_keys = 0;

/* the key's slot, or NULL: not (yet) worth one, `n` verifications being asked now */
static slot *prepared(const unsigned char pk[32], Py_ssize_t n) {
    unsigned idx = ((unsigned)pk[0] | ((unsigned)pk[1] << 8)) % SLOTS;
    slot *s = cache[idx];
    if (s != NULL && memcmp(s->pk, pk, 32) == 0) return s;
    unsigned counter = ((unsigned)pk[2] | ((unsigned)pk[3] << 8)) % COUNTERS;
    if (uses[counter] + n < ADMIT) {
        uses[counter] = (unsigned char)(uses[counter] + n);
        return NULL;
    }
    uses[counter] = 0;
    if (s == NULL) {
        s = PyMem_RawMalloc(sizeof(slot));
        if (s == NULL) return NULL;
        cache[idx] = s;
    }
    memcpy(s->pk, pk, 32);
    s->usable = 0;
    ge a;
    if (p_valid_point(pk) == 1 && ge_frombytes(&a, pk)) {
        fe_neg(a.X, a.X);
        fe_neg(a.T, a.T);
        build_table(&s->table.t[0][0], A_ODD, &a);
        s->usable = 1;
        prepared_keys++;
    } else {
        libsodium_keys++;
    }
    return s;
}

static int canonical_scalar(const unsigned char s[32]) { /* s < L */
    for (int i = 31; i >= 0; i--) {
        if (s[i] < L_BYTES[i]) return 1;
        if (s[i] > L_BYTES[i]) return 0;
    }
    return 0;
}

static const unsigned char IDENTITY[32] = {1};

#define MAX_TAG 64

/* R' = s B - h A into *r for a signature the prepared key may judge (1), else 0: the key is
   not prepared, S is not canonical or R is the identity (then libsodium decides) */
static int fast_point(const slot *key, const unsigned char *sig, const unsigned char *m,
                      size_t mlen, const unsigned char *pk, ge *r) {
    if (key == NULL || !key->usable || !canonical_scalar(sig + 32) ||
        memcmp(sig, IDENTITY, 32) == 0)
        return 0;
    unsigned char buf[64 + MAX_TAG + 32], hash[64], h[32];
    memcpy(buf, sig, 32);
    memcpy(buf + 32, pk, 32);
    memcpy(buf + 64, m, mlen);
    p_sha512(hash, buf, 64 + mlen);
    p_reduce(h, hash);
    double_scalarmult(r, sig + 32, h, &key->table);
    return 1;
}

/* 1 if the prepared key accepts sig (this file's answer alone) */
static int fast_accepts(const slot *key, const unsigned char *sig, const unsigned char *m,
                        size_t mlen, const unsigned char *pk) {
    ge r;
    unsigned char check[32];
    if (!fast_point(key, sig, m, mlen, pk, &r)) return 0;
    ge_tobytes(check, &r);
    return memcmp(check, sig, 32) == 0;
}

/* 1 if sig is pk's signature over m (mlen bytes), as crypto_sign_verify_detached says */
static int verify_one(const slot *key, const unsigned char *sig, const unsigned char *m,
                      size_t mlen, const unsigned char *pk) {
    if (fast_accepts(key, sig, m, mlen, pk)) return 1;
    return p_verify(sig, m, mlen, pk) == 0; /* refusals are libsodium's own */
}

/* ---- Python ---- */

static int little_endian(void) {
    const uint16_t one = 1;
    return *(const unsigned char *)&one == 1;
}

static PyObject *bind(PyObject *self, PyObject *args) {
    unsigned long long a[5];
    if (!PyArg_ParseTuple(args, "KKKKK", &a[0], &a[1], &a[2], &a[3], &a[4])) return NULL;
    for (int i = 0; i < 5; i++)
        if (a[i] == 0) {
            PyErr_SetString(PyExc_ValueError, "null function address");
            return NULL;
        }
    if (!little_endian()) {
        PyErr_SetString(PyExc_RuntimeError, "big-endian machine: use libsodium's verify");
        return NULL;
    }
    p_verify = (verify_fn)(uintptr_t)a[0];
    p_sha256 = (sha256_fn)(uintptr_t)a[1];
    p_sha512 = (sha512_fn)(uintptr_t)a[2];
    p_reduce = (reduce_fn)(uintptr_t)a[3];
    p_valid_point = (valid_point_fn)(uintptr_t)a[4];
    if (!tables_built) {
        ge b;
        fe_frombytes(D, D_BYTES);
        fe_add(D2, D, D);
        fe_frombytes(SQRTM1, SQRTM1_BYTES);
        if (!ge_frombytes(&b, B_BYTES)) {
            PyErr_SetString(PyExc_RuntimeError, "the base point does not decode");
            return NULL;
        }
        build_table(&B_TABLE[0][0], B_ODD, &b);
        tables_built = 1;
    }
    Py_RETURN_NONE;
}

static int bound(void) {
    if (p_verify == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "bind() has not been called");
        return 0;
    }
    return 1;
}

/* verify_detached(tag, public_key, body, signature) -> SHA-256(body) if signature is
   public_key's Ed25519 signature over tag || SHA-256(body), else None (as
   _batchsign.verify_detached, with the key prepared once) */
static PyObject *verify_detached(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (!bound()) return NULL;
    if (nargs != 4 || !PyBytes_CheckExact(args[0]) || !PyBytes_CheckExact(args[1]) ||
        !PyBytes_CheckExact(args[2]) || !PyBytes_CheckExact(args[3])) {
        PyErr_SetString(PyExc_TypeError, "verify_detached(tag, public_key, body, signature): bytes");
        return NULL;
    }
    Py_ssize_t tag_len = PyBytes_GET_SIZE(args[0]);
    if (tag_len > MAX_TAG || PyBytes_GET_SIZE(args[1]) != 32 || PyBytes_GET_SIZE(args[3]) != 64) {
        PyErr_SetString(PyExc_ValueError,
                        "tag longer than 64 bytes, public key not 32 or signature not 64 bytes");
        return NULL;
    }
    const unsigned char *pk = (const unsigned char *)PyBytes_AS_STRING(args[1]);
    const unsigned char *body = (const unsigned char *)PyBytes_AS_STRING(args[2]);
    const unsigned char *sig = (const unsigned char *)PyBytes_AS_STRING(args[3]);
    unsigned char msg[MAX_TAG + 32];
    memcpy(msg, PyBytes_AS_STRING(args[0]), (size_t)tag_len);
    if (p_sha256(msg + tag_len, body, (unsigned long long)PyBytes_GET_SIZE(args[2])) != 0) {
        PyErr_SetString(PyExc_RuntimeError, "libsodium failed to hash");
        return NULL;
    }
    /* the GIL is held throughout: the key cache is shared */
    slot *key = prepared(pk, 1);
    if (!verify_one(key, sig, msg, (size_t)tag_len + 32, pk)) Py_RETURN_NONE;
    return PyBytes_FromStringAndSize((const char *)msg + tag_len, 32);
}

/* verify_many(tag, public_key, bodies, signatures) -> list: per item SHA-256(body) if its
   signature is public_key's over tag || SHA-256(body), else None (None too for an item that is
   not bytes with a 64-byte signature: the caller checks those itself). One field inversion for
   the whole batch's final encodings; the same verdicts as verify_detached on each item. */
static PyObject *verify_many(PyObject *self, PyObject *args) {
    PyObject *tag, *pk_obj, *bodies, *sigs;
    if (!bound()) return NULL;
    if (!PyArg_ParseTuple(args, "SSO!O!", &tag, &pk_obj, &PyList_Type, &bodies, &PyList_Type,
                          &sigs))
        return NULL;
    Py_ssize_t tag_len = PyBytes_GET_SIZE(tag), n = PyList_GET_SIZE(bodies);
    if (tag_len > MAX_TAG || PyBytes_GET_SIZE(pk_obj) != 32 || PyList_GET_SIZE(sigs) != n) {
        PyErr_SetString(PyExc_ValueError, "tag longer than 64 bytes, public key not 32 bytes, "
                                          "or not as many signatures as bodies");
        return NULL;
    }
    const unsigned char *pk = (const unsigned char *)PyBytes_AS_STRING(pk_obj);
    PyObject *out = PyList_New(n);
    ge *points = PyMem_Malloc(sizeof(ge) * (size_t)(n > 0 ? n : 1));
    fe *prefix = PyMem_Malloc(sizeof(fe) * (size_t)(n > 0 ? n : 1));
    unsigned char *digests = PyMem_Malloc(32 * (size_t)(n > 0 ? n : 1));
    signed char *state = PyMem_Malloc((size_t)(n > 0 ? n : 1));
    if (out == NULL || points == NULL || prefix == NULL || digests == NULL || state == NULL) {
        Py_XDECREF(out);
        PyMem_Free(points); PyMem_Free(prefix); PyMem_Free(digests); PyMem_Free(state);
        return PyErr_NoMemory();
    }
    unsigned char msg[MAX_TAG + 32];
    memcpy(msg, PyBytes_AS_STRING(tag), (size_t)tag_len);
    size_t mlen = (size_t)tag_len + 32;
    slot *key = prepared(pk, n);
    Py_ssize_t last = -1; /* the last item whose point is in the running product */
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *body = PyList_GET_ITEM(bodies, i), *sig = PyList_GET_ITEM(sigs, i);
        state[i] = 0; /* 0: not checked (not bytes), 1: point computed, 2: libsodium decides */
        if (!PyBytes_CheckExact(body) || !PyBytes_CheckExact(sig) || PyBytes_GET_SIZE(sig) != 64)
            continue;
        const unsigned char *sg = (const unsigned char *)PyBytes_AS_STRING(sig);
        if (p_sha256(digests + 32 * i, (const unsigned char *)PyBytes_AS_STRING(body),
                     (unsigned long long)PyBytes_GET_SIZE(body)) != 0) {
            Py_DECREF(out);
            PyMem_Free(points); PyMem_Free(prefix); PyMem_Free(digests); PyMem_Free(state);
            PyErr_SetString(PyExc_RuntimeError, "libsodium failed to hash");
            return NULL;
        }
        state[i] = 2;
        memcpy(msg + tag_len, digests + 32 * i, 32);
        if (!fast_point(key, sg, msg, mlen, pk, &points[i])) continue;
        if (last < 0) fe_copy(prefix[i], points[i].Z);
        else fe_mul(prefix[i], prefix[last], points[i].Z);
        last = i;
        state[i] = 1;
    }
    /* Montgomery's trick: inv = 1 / (Z_a Z_b ... Z_last), then each 1 / Z_i walking back */
    fe inv, zi, x, y;
    unsigned char check[32];
    if (last >= 0) fe_invert(inv, prefix[last]);
    for (Py_ssize_t i = last; i >= 0; i--) {
        if (state[i] != 1) continue;
        Py_ssize_t before = i - 1;
        while (before >= 0 && state[before] != 1) before--;
        if (before >= 0) {
            fe_mul(zi, inv, prefix[before]);
            fe_mul(inv, inv, points[i].Z);
        } else {
            fe_copy(zi, inv);
        }
        fe_mul(x, points[i].X, zi);
        fe_mul(y, points[i].Y, zi);
        fe_tobytes(check, y);
        check[31] ^= (unsigned char)(fe_isodd(x) << 7);
        const unsigned char *sg = (const unsigned char *)PyBytes_AS_STRING(PyList_GET_ITEM(sigs, i));
        if (memcmp(check, sg, 32) != 0) state[i] = 2; /* refused here: libsodium decides */
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        int valid = state[i] == 1;
        if (state[i] == 2) {
            memcpy(msg + tag_len, digests + 32 * i, 32);
            valid = p_verify((const unsigned char *)PyBytes_AS_STRING(PyList_GET_ITEM(sigs, i)),
                             msg, mlen, pk) == 0;
        }
        PyObject *item;
        if (valid) {
            item = PyBytes_FromStringAndSize((const char *)digests + 32 * i, 32);
            if (item == NULL) {
                Py_DECREF(out);
                out = NULL;
                break;
            }
        } else {
            item = Py_NewRef(Py_None);
        }
        PyList_SET_ITEM(out, i, item);
    }
    PyMem_Free(points); PyMem_Free(prefix); PyMem_Free(digests); PyMem_Free(state);
    return out;
}

/* check_message(args, fast_alone): (public_key, message, signature) judged with the key
   prepared at once; fast_alone: this file's answer without libsodium's look at a refusal, and
   whether the key is prepared (a tuple); else the verdict (a bool) */
static PyObject *check_message(PyObject *args, int fast_alone) {
    Py_buffer pk, m, sig;
    if (!bound()) return NULL;
    if (!PyArg_ParseTuple(args, "y*y*y*", &pk, &m, &sig)) return NULL;
    PyObject *result = NULL;
    if (pk.len != 32 || sig.len != 64 || m.len > MAX_TAG + 32) {
        PyErr_SetString(PyExc_ValueError, "32-byte key, 64-byte signature, message <= 96 bytes");
    } else {
        slot *key = prepared(pk.buf, ADMIT);
        if (fast_alone) {
            int ok = fast_accepts(key, sig.buf, m.buf, (size_t)m.len, pk.buf);
            result = Py_BuildValue("(OO)", ok ? Py_True : Py_False,
                                   key != NULL && key->usable ? Py_True : Py_False);
        } else {
            result = PyBool_FromLong(verify_one(key, sig.buf, m.buf, (size_t)m.len, pk.buf));
        }
    }
    PyBuffer_Release(&pk);
    PyBuffer_Release(&m);
    PyBuffer_Release(&sig);
    return result;
}

/* verify_message(public_key, message, signature) -> bool: the plain check (tests) */
static PyObject *verify_message(PyObject *self, PyObject *args) {
    return check_message(args, 0);
}

/* fast_only(public_key, message, signature) -> (valid, key prepared): this file's answer
   alone, without the libsodium check of a refusal (tests compare it with libsodium) */
static PyObject *fast_only(PyObject *self, PyObject *args) {
    return check_message(args, 1);
}

static PyObject *forget_keys(PyObject *self, PyObject *unused) {
    for (int i = 0; i < SLOTS; i++) {
        PyMem_RawFree(cache[i]);
        cache[i] = NULL;
    }
    memset(uses, 0, sizeof uses);
    Py_RETURN_NONE;
}

static PyObject *key_counts(PyObject *self, PyObject *unused) {
    return Py_BuildValue("(nn)", prepared_keys, libsodium_keys);
}

static PyMethodDef methods[] = {
    {"bind", bind, METH_VARARGS,
     "bind(verify, sha256, sha512, scalar_reduce, is_valid_point): libsodium's functions"},
    {"verify_detached", (PyCFunction)(void (*)(void))verify_detached, METH_FASTCALL,
     "verify_detached(tag, public_key, body, signature) -> sha256(body) if valid, else None"},
    {"verify_many", verify_many, METH_VARARGS,
     "verify_many(tag, public_key, bodies, signatures) -> [sha256(body) or None, ...]"},
    {"verify_message", verify_message, METH_VARARGS,
     "verify_message(public_key, message, signature) -> bool"},
    {"fast_only", fast_only, METH_VARARGS,
     "fast_only(public_key, message, signature) -> (valid, key prepared): no libsodium retry"},
    {"forget_keys", forget_keys, METH_NOARGS,
     "forget_keys(): drop every prepared key and use count (tests)"},
    {"key_counts", key_counts, METH_NOARGS,
     "key_counts() -> (keys prepared, keys left to libsodium) since start"},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_edverify",
                                    "Ed25519 verification with per-key tables (see source)", -1,
                                    methods, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__edverify(void) { return PyModule_Create(&module); }
