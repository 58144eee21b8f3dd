/* What the shim's sources share: the CBLAS sgemm/sgemv signatures and the single-threaded instance. */
#ifndef MLX_MQA_SHIM_H
#define MLX_MQA_SHIM_H

enum { RowMajor = 101, ColMajor = 102 };
enum { NoTrans = 111, Trans = 112, ConjTrans = 113 };

typedef void (*sgemm_fn)(int, int, int, int, int, int, float, const float *, int, const float *, int, float,
                         float *, int);
typedef void (*sgemv_fn)(int, int, int, int, float, const float *, int, const float *, int, float, float *, int);

/* The second OpenBLAS instance, fixed at one thread (gemv_shim.c), or 0 when it could not be opened. */
sgemm_fn mlx_mqa_single_sgemm(void);
sgemv_fn mlx_mqa_single_sgemv(void);

#endif
