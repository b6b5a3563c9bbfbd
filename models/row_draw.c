/* The engine's draw of one code per sample on CPU, in one call: the guidance mix of each sample's logits,
   the class guide's steer, the temperature and the inverse-CDF draw of controls.draw, then the new codes
   written as the rows' next inputs. In torch these are some twenty small operations a step, each behind
   a few microseconds of overhead: at one guided sample of the shipped prior, as long as the step's layers.

   The mix is torch's arithmetic operation for operation (its lerp is a fused multiply-add; this file is
   compiled with -ffp-contract=off so nothing else fuses), so the mixed logits are the torch path's bits.
   The softmax, in double as controls.draw's, sums and exponentiates in its own order: its
   probabilities can differ from torch's in the last bits of a double, so a code can differ from the
   torch path's only where a uniform falls that close to a boundary between two codes. Every sample is
   drawn the same way whatever shares the step: a seed gives the same codes alone or crowded. */
#include <math.h>
#include <stdint.h>

typedef struct {
    int64_t samples, n_codes;
    /* each sample's row in the step's logits, and its no-class companion's (companion NULL: none) */
    const int64_t *main, *companion;
    const float *scales, *temperature;
    const uint8_t *drawn_here;  /* 0: a top-k or top-p sample, left to torch (its mixed logits in `chosen`) */
    const double *uniforms;  /* sample i's next uniform at uniforms[i * uniform_row + drawn[i]] */
    int64_t uniform_row;
    int64_t *drawn;
    /* the class guide: samples guided[g] steered by guide_scales[g] * (guide row guide_class[g] - guide_none[g]) */
    int64_t steered;
    const int64_t *guided, *guide_class, *guide_none;
    const float *guide_scales;
    /* the next inputs: tokens[rows[j]] = codes[owner[j]], of the prior's rows and of the guide's */
    int64_t *main_tokens, *guide_tokens;
    const int64_t *main_rows, *main_owner, *guide_rows, *guide_owner;
    int64_t main_count, guide_count;
    float *chosen;  /* (samples, n_codes) scratch: the mixed logits */
    double *cdf;    /* (n_codes) scratch */
} DrawPlan;

#define DRAW_BAD_ROW (-1)

/* torch.lerp(start, end, weight) as ATen's vector code computes it */
static float lerp(float start, float end, float weight) {
    int small = fabsf(weight) < 0.5f;
    return fmaf(small ? weight : weight - 1.0f, end - start, small ? start : end);
}

static int64_t inverse_cdf(const float *logits, int64_t n, float temperature, double uniform, double *cdf) {
    double top = -INFINITY;
    for (int64_t k = 0; k < n; k++) {
        double x = (double)(logits[k] / temperature);
        cdf[k] = x;
        top = x > top ? x : top;
    }
    double sum = 0;
    for (int64_t k = 0; k < n; k++) {
        cdf[k] = exp(cdf[k] - top);
        sum += cdf[k];
    }
    double running = 0;
    for (int64_t k = 0; k < n; k++) {
        running += cdf[k] / sum;
        cdf[k] = running;
    }
    double target = uniform * cdf[n - 1];
    for (int64_t k = 0; k < n; k++)
        if (cdf[k] > target) return k;
    return n - 1;
}

/* One step's codes (samples,) from the prior's logits (rows, n_codes) and the class guide's (guide_rows,
   n_codes; NULL when no sample is steered). With write_tokens, the codes become the rows' next inputs (a
   step with top-k or top-p samples writes them once torch has drawn those). Returns DRAW_BAD_ROW, having
   drawn nothing, where the plan names a row the logits do not have. */
int draw_codes(const DrawPlan *p, const float *logits, int64_t rows, const float *guide_logits,
               int64_t guide_rows, int64_t *codes, int write_tokens) {
    int64_t n = p->n_codes;
    for (int64_t i = 0; i < p->samples; i++)
        if (p->main[i] < 0 || p->main[i] >= rows || (p->companion && (p->companion[i] < 0 || p->companion[i] >= rows)))
            return DRAW_BAD_ROW;
    for (int64_t g = 0; g < p->steered; g++)
        if (!guide_logits || p->guide_class[g] < 0 || p->guide_class[g] >= guide_rows || p->guide_none[g] < 0
            || p->guide_none[g] >= guide_rows || p->guided[g] < 0 || p->guided[g] >= p->samples)
            return DRAW_BAD_ROW;
    for (int64_t i = 0; i < p->samples; i++) {
        const float *own = logits + p->main[i] * n;
        float *chosen = p->chosen + i * n, scale = p->scales[i];
        if (p->companion && scale != 1.0f) {
            const float *unconditioned = logits + p->companion[i] * n;
            for (int64_t k = 0; k < n; k++) chosen[k] = lerp(unconditioned[k], own[k], scale);
        } else {
            for (int64_t k = 0; k < n; k++) chosen[k] = own[k];
        }
    }
    for (int64_t g = 0; g < p->steered; g++) {
        const float *with = guide_logits + p->guide_class[g] * n, *without = guide_logits + p->guide_none[g] * n;
        float *chosen = p->chosen + p->guided[g] * n, scale = p->guide_scales[g];
        for (int64_t k = 0; k < n; k++) {
            float steer = scale * (with[k] - without[k]);
            chosen[k] = chosen[k] + steer;
        }
    }
    for (int64_t i = 0; i < p->samples; i++) {
        double uniform = p->uniforms[i * p->uniform_row + p->drawn[i]];
        p->drawn[i] += 1;
        if (p->drawn_here[i]) codes[i] = inverse_cdf(p->chosen + i * n, n, p->temperature[i], uniform, p->cdf);
    }
    if (write_tokens) {
        for (int64_t j = 0; j < p->main_count; j++) p->main_tokens[p->main_rows[j]] = codes[p->main_owner[j]];
        for (int64_t j = 0; j < p->guide_count; j++) p->guide_tokens[p->guide_rows[j]] = codes[p->guide_owner[j]];
    }
    return 0;
}
