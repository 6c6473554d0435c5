/* driver.c: classify n float32 images read from a file with an exported model (float32 with its
   weights, or int8 with -DGRADC_INT8), write the outputs, print the workspace bytes it needed.
   Usage: driver N IN.bin OUT.bin (examples/int8/compare.py builds and runs it). */
#include <stdio.h>
#include <stdlib.h>
#define GRADC_GENERIC
#include GRADC_HEADER

int main(int argc, char **argv)
{
    if (argc != 4) return 2;
    const int n = atoi(argv[1]);
    const size_t nin = (size_t)n * GRADC_INPUT_SIZE, nout = (size_t)n * GRADC_OUTPUT_SIZE;
    float *x = malloc(nin * sizeof *x), *y = malloc(nout * sizeof *y);
    void *work = malloc(GRADC_WORKSPACE_BYTES);
    FILE *f = fopen(argv[2], "rb");
    if (!x || !y || !work || !f || fread(x, sizeof *x, nin, f) != nin) return 3;
    fclose(f);
    if (gradc_check_identity() != 0) return 4;
#ifdef GRADC_INT8
    const int rc = gradc_forward(n, x, y, work, GRADC_WORKSPACE_BYTES);
#else
    const int rc = gradc_forward(n, gradc_weights, x, y, work, GRADC_WORKSPACE_BYTES);
#endif
    if (rc != 0) return 10 + rc;
    f = fopen(argv[3], "wb");
    if (!f || fwrite(y, sizeof *y, nout, f) != nout) return 5;
    fclose(f);
    printf("%d\n", (int)GRADC_WORKSPACE_BYTES);
    free(x); free(y); free(work);
    return 0;
}
