/*
 * examples/embed/main.c: a plain C program that runs a model exported by gradc, with no Python.
 *
 *   ./main SAMPLES.bin [STEPS] [LR]
 *
 * It loads the trained weights compiled into the program (NAME_weights.c), runs inference on
 * the samples, then trains on them on-device for STEPS SGD steps and prints the loss falling,
 * then the outputs again. Written once for any exported model with one input, one target and
 * one output, through the generic names its header defines under GRADC_GENERIC; the Makefile
 * passes the header's name as GRADC_HEADER.
 *
 * SAMPLES.bin (little-endian, written by prepare.py):
 *   "GRDC", int32 real_size (4 or 8), int32 n,
 *   n * GRADC_INPUT_SIZE reals, n * GRADC_TARGET_SIZE targets (int32 or reals).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define GRADC_GENERIC
#ifndef GRADC_HEADER
#error "compile with -DGRADC_HEADER='\"model.h\"' (see the Makefile)"
#endif
#include GRADC_HEADER

static void *read_exactly(FILE *f, size_t bytes)
{
    void *p = malloc(bytes ? bytes : 1);
    if (p && fread(p, 1, bytes, f) != bytes) {
        free(p);
        p = NULL;
    }
    return p;
}

static void print_outputs(int n, const gradc_real *out)
{
    for (int s = 0; s < n; ++s) {
        printf("output %d:", s);
        for (int j = 0; j < GRADC_OUTPUT_SIZE; ++j)
            printf(" %.17g", (double)out[(size_t)s * GRADC_OUTPUT_SIZE + j]);
        printf("\n");
    }
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: %s SAMPLES.bin [STEPS] [LR]\n", argv[0]);
        return 2;
    }
    /* the object and the weights linked in must be the ones the header describes */
    if (gradc_check_identity() != 0 || gradc_check_weights() != 0) {
        fprintf(stderr, "the model object or weights do not match the header (dtype, lanes or model version)\n");
        return 3;
    }
    const int steps = argc > 2 ? atoi(argv[2]) : 10;
    const gradc_real lr = (gradc_real)(argc > 3 ? atof(argv[3]) : 0.1);

    FILE *f = fopen(argv[1], "rb");
    if (!f) {
        perror(argv[1]);
        return 1;
    }
    char magic[4];
    int32_t real_size = 0, n = 0;
    if (fread(magic, 1, 4, f) != 4 || memcmp(magic, "GRDC", 4) != 0 || fread(&real_size, 4, 1, f) != 1
        || fread(&n, 4, 1, f) != 1 || real_size != (int32_t)sizeof(gradc_real) || n < 1) {
        fprintf(stderr, "%s: not a samples file for this model\n", argv[1]);
        fclose(f);
        return 1;
    }
    gradc_real *x = read_exactly(f, (size_t)n * GRADC_INPUT_SIZE * sizeof(gradc_real));
    gradc_target *y = read_exactly(f, (size_t)n * GRADC_TARGET_SIZE * sizeof(gradc_target));
    fclose(f);

    gradc_real *params = malloc(sizeof(gradc_real) * GRADC_N_PARAMS);
    gradc_real *grad = malloc(sizeof(gradc_real) * GRADC_N_PARAMS);
    gradc_real *out = malloc(sizeof(gradc_real) * (size_t)n * GRADC_OUTPUT_SIZE);
    const size_t work_bytes = gradc_workspace_size(n);
    void *work = malloc(work_bytes + 1);
    int rc = 1;
    if (!x || !y || !params || !grad || !out || !work) {
        fprintf(stderr, "out of memory or truncated samples file\n");
        goto done;
    }
    memcpy(params, gradc_weights, sizeof(gradc_real) * GRADC_N_PARAMS);   /* the trained model */

    if ((rc = gradc_forward(n, params, x, out, work, work_bytes)) != 0)
        goto fail;
    print_outputs(n, out);

    gradc_real loss = 0;
    for (int k = 0; k < steps; ++k) {                                   /* on-device training */
        if ((rc = gradc_sgd_step(n, params, x, y, lr, &loss, grad, work, work_bytes)) != 0)
            goto fail;
        printf("step %d loss %.17g\n", k, (double)loss);
    }
    if ((rc = gradc_loss(n, params, x, y, &loss, work, work_bytes)) != 0)
        goto fail;
    printf("final loss %.17g\n", (double)loss);
    if ((rc = gradc_forward(n, params, x, out, work, work_bytes)) != 0)
        goto fail;
    print_outputs(n, out);
    rc = 0;
    goto done;
fail:
    fprintf(stderr, "the model returned error %d\n", rc);
done:
    free(x);
    free(y);
    free(params);
    free(grad);
    free(out);
    free(work);
    return rc;
}
