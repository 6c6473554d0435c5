/*
 * main.c: an exported gradc model on a microcontroller. Runs the forward pass on the samples of
 * data.h with the exported weights, then (a training export) MCU_STEPS SGD steps on them, and
 * prints every output, loss and final parameter as the hex bits of its float, the return codes,
 * and the stack's high-water mark, through semihosting. tests/test_mcu.py builds it for a
 * Cortex-M4 and a Cortex-M0, runs it under QEMU and compares the numbers with the host's.
 *
 * Build (see tests/test_mcu.py for the exact commands):
 *   arm-none-eabi-gcc -mcpu=cortex-m4 -mthumb -mfloat-abi=hard -mfpu=fpv4-sp-d16 -O2 -std=c99 \
 *       -DGRADC_HEADER='"moons.h"' -I<export> -I. main.c startup.c <export>/moons.c \
 *       <export>/moons_weights.c -nostartfiles -T cortex-m.ld -Wl,--defsym=FLASH_SIZE=4M,... -lm
 * data.h defines MCU_N samples mcu_x (and mcu_y), MCU_STEPS and MCU_LR.
 */
#include <string.h>
#include "mcu.h"
#define GRADC_GENERIC
#include GRADC_HEADER
#include "data.h"

static gradc_real out[MCU_N * GRADC_OUTPUT_SIZE];
static gradc_real work[GRADC_WORKSPACE_BYTES / sizeof(gradc_real) + 1];
#if MCU_STEPS > 0
static gradc_real params[GRADC_N_PARAMS], grad[GRADC_N_PARAMS];
#endif

int main(void)
{
    if (gradc_check_identity() != 0 || gradc_check_weights() != 0) {
        mcu_puts("identity mismatch\n");
        return 1;
    }
    int rc = gradc_forward(MCU_N, gradc_weights, mcu_x, out, work, sizeof work);
    mcu_put_hex("forward", (uint32_t)rc);
    for (int j = 0; j < MCU_N * GRADC_OUTPUT_SIZE; ++j) mcu_put_float("out", out[j]);
#if MCU_STEPS > 0
    memcpy(params, gradc_weights, sizeof params);
    for (int k = 0; k < MCU_STEPS; ++k) {
        gradc_real loss = 0;
        rc = gradc_sgd_step(MCU_N, params, mcu_x, mcu_y, MCU_LR, &loss, grad, work, sizeof work);
        mcu_put_hex("step", (uint32_t)rc);
        mcu_put_float("loss", loss);
    }
    for (int j = 0; j < GRADC_N_PARAMS; ++j) mcu_put_float("param", params[j]);
#endif
    mcu_put_hex("stack", mcu_stack_used());
    return 0;
}
