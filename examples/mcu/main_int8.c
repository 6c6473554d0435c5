/*
 * main_int8.c: an int8 export (gradc export --quantize int8) on a microcontroller. Runs the forward
 * pass on the samples of data.h and prints every output as the hex bits of its float, the return
 * code and the stack's high-water mark through semihosting. tests/test_mcu.py builds it for a
 * Cortex-M0 (no FPU: the integer kernels need none) and checks the outputs bit for bit against
 * gradc's Python reference of the integer path.
 *
 * Build (see tests/test_mcu.py for the exact commands):
 *   arm-none-eabi-gcc -mcpu=cortex-m0 -mthumb -mfloat-abi=soft -Os -std=c99 \
 *       -DGRADC_HEADER='"digits.h"' -I<export> -I. main_int8.c startup.c <export>/digits.c \
 *       -nostartfiles -T cortex-m.ld -Wl,--defsym=FLASH_SIZE=256K,... -lm
 * data.h defines MCU_N samples mcu_x.
 */
#include "mcu.h"
#define GRADC_GENERIC
#include GRADC_HEADER
#include "data.h"

static float out[MCU_N * GRADC_OUTPUT_SIZE];
static float work[GRADC_WORKSPACE_BYTES / sizeof(float) + 1];

int main(void)
{
    if (gradc_check_identity() != 0) {
        mcu_puts("identity mismatch\n");
        return 1;
    }
    const int rc = gradc_forward(MCU_N, mcu_x, out, work, sizeof work);
    mcu_put_hex("forward", (uint32_t)rc);
    for (int j = 0; j < MCU_N * GRADC_OUTPUT_SIZE; ++j) mcu_put_float("out", out[j]);
    mcu_put_hex("stack", mcu_stack_used());
    return 0;
}
